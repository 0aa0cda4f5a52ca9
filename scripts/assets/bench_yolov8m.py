"""A benchmark-only YOLOv8m-class detector in plain torch, with RANDOM weights, exported to ONNX.

THE WEIGHTS ARE RANDOM (fixed seed): the model detects nothing real. It exists to measure throughput at
the size DeepStream is usually measured with (YOLOv8m, 640x640, about 25 M parameters, 79 GFLOPs), not
accuracy; never ship it or compare its detections with anything.

The network has YOLOv8m's shape (Ultralytics yolov8.yaml at width 0.75, depth 0.67, max channels 768):
Conv-BN-SiLU blocks, C2f, SPPF, the PAN neck, and the decoupled anchor-free head with DFL at strides
8/16/32 (80x80 + 40x40 + 20x20 = 8400 anchors). The output is the Ultralytics export layout, what
pipelines/detection.py decodes as ``yolo_anchors_last``: ``output0`` ``[N, 84, 8400]`` = cx, cy, w, h
in input pixels, then 80 class scores (sigmoid). Input ``images`` ``[N, 3, 640, 640]`` float32, RGB in
[0, 1], dynamic batch. BatchNorm is folded into the convolutions before export (as Ultralytics exports).

So that the daemon's host decoding and NMS see a realistic load (a few boxes per image, not 0 or 8400),
the random network is calibrated on synthetic image-like frames made from the seed: the BatchNorm
statistics are set from them (unit-variance activations all the way down); each image's class logits are
standardised over its anchors (two small reductions over [N, 80, 8400], NOT in YOLOv8: a random
network's logits otherwise shift with the frame's content as a whole); and they are scaled and shifted
so that nearly all scores are far below 0.25 and a few anchors per image exceed it (about 12 on a
calibration frame; 0 to 60 on the frames of bikes.mp4, 0 to 45 boxes after NMS at 0.3).

Usage: python scripts/assets/bench_yolov8m.py OUT.onnx [--seed 0] [--imgsz 640]
(``scripts/fetch-assets --bench-models`` builds assets/models/yolov8m_bench_640.onnx with it.)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

try:
    import torch
    from torch import nn
except ImportError as exc:  # the CLI says so in one line; an importer (a test) gets the ImportError
    if __name__ == "__main__":
        sys.exit(f"bench_yolov8m.py: ERROR: needs torch and onnx ({exc}); use a python that has them "
                 "(.venv-convert/bin/python, or python3 on the GPU machine)")
    raise

WIDTH, DEPTH, MAX_CHANNELS = 0.75, 0.67, 768  # YOLOv8m
NUM_CLASSES, REG_MAX, STRIDES = 80, 16, (8, 16, 32)
SCORE_TARGET = 0.25         # calibrate so that about ANCHORS_PER_IMAGE anchors per image score above this
ANCHORS_PER_IMAGE = 12
LOGIT_STD = 1.0             # each level's class logits: this spread on the calibration frames
SCORE_TEMPERATURE = 1.5     # score = sigmoid(SCORE_TEMPERATURE * (standardised logit - its calibrated cut) + logit(0.25))
COCO = ("person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
        "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
        "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
        "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
        "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven "
        "toaster sink refrigerator book clock vase scissors teddy_bear").split()


def ch(c: int) -> int:
    return int(math.ceil(min(c, MAX_CHANNELS) * WIDTH / 8) * 8)


def n_(n: int) -> int:
    return max(round(n * DEPTH), 1)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions: split, n bottlenecks on one half, concatenate everything."""

    def __init__(self, c1: int, c2: int, n: int, shortcut: bool):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c1 // 2, 1), Conv(c1 // 2 * 4, c2, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Decoupled anchor-free head: per level a box branch (4 x REG_MAX DFL bins) and a class branch;
    decoded in the graph to [N, 4 + classes, anchors] (cx, cy, w, h in input pixels, sigmoid scores)."""

    def __init__(self, chs: tuple[int, ...], imgsz: int):
        super().__init__()
        c2, c3 = max(16, chs[0] // 4, REG_MAX * 4), max(chs[0], min(NUM_CLASSES, 100))
        self.box = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1)) for c in chs)
        self.cls = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, NUM_CLASSES, 1)) for c in chs)
        self.dfl = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)
        # Grid sizes are fixed by the input size (python ints, so the export has no Shape arithmetic).
        self.cells = [(imgsz // s) ** 2 for s in STRIDES]
        anchors, strides = [], []
        for s in STRIDES:
            g = imgsz // s
            y, x = torch.meshgrid(torch.arange(g) + 0.5, torch.arange(g) + 0.5, indexing="ij")
            anchors.append(torch.stack((x.flatten(), y.flatten())))
            strides.append(torch.full((1, g * g), float(s)))
        self.register_buffer("anchors", torch.cat(anchors, 1).unsqueeze(0))  # [1, 2, A] in grid cells
        self.register_buffer("strides", torch.cat(strides, 1).unsqueeze(0))  # [1, 1, A]
        # score = sigmoid(standardised logit * score_scale + score_shift): set by calibrate()
        self.spread_floor, self.score_scale, self.score_shift = 0.25 * LOGIT_STD, SCORE_TEMPERATURE, 0.0

    def logits(self, feats):
        """Per level: the class branch's raw logits, [N, classes, cells] (for calibration)."""
        return [cls(f).reshape(-1, NUM_CLASSES, cells) for cls, f, cells in zip(self.cls, feats, self.cells)]

    def standardized(self, cls):
        """Each image's class logits standardised over its anchors (per class; the spread has a floor so
        that a flat frame scores nothing). Not in YOLOv8: it keeps the count of confident anchors of
        the random network about the same on every frame (a few hundred FLOPs per anchor)."""
        centred = cls - cls.mean(2, keepdim=True)
        return centred * torch.rsqrt((centred * centred).mean(2, keepdim=True) + self.spread_floor ** 2)

    def forward(self, feats):
        a = sum(self.cells)
        # (Ultralytics concatenates both branches and splits them again: the same tensors, without the Split.)
        box = torch.cat([box(f).reshape(-1, 4 * REG_MAX, cells) for box, f, cells in zip(self.box, feats, self.cells)], 2)
        cls = torch.cat(self.logits(feats), 2)
        # DFL: expected distance over REG_MAX bins, for each of left, top, right, bottom.
        dist = self.dfl(box.reshape(-1, 4, REG_MAX, a).transpose(2, 1).softmax(1)).reshape(-1, 4, a)
        lt, rb = dist.split((2, 2), 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, (self.standardized(cls) * self.score_scale + self.score_shift).sigmoid()), 1)


class YOLOv8m(nn.Module):
    def __init__(self, imgsz: int = 640):
        super().__init__()
        if imgsz % 32:
            raise ValueError(f"input size {imgsz} is not a multiple of 32")
        c64, c128, c256, c512, c1024 = (ch(c) for c in (64, 128, 256, 512, 1024))
        self.stem = nn.Sequential(Conv(3, c64, 3, 2), Conv(c64, c128, 3, 2), C2f(c128, c128, n_(3), True))
        self.p3 = nn.Sequential(Conv(c128, c256, 3, 2), C2f(c256, c256, n_(6), True))
        self.p4 = nn.Sequential(Conv(c256, c512, 3, 2), C2f(c512, c512, n_(6), True))
        self.p5 = nn.Sequential(Conv(c512, c1024, 3, 2), C2f(c1024, c1024, n_(3), True), SPPF(c1024, c1024))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top_down4 = C2f(c1024 + c512, c512, n_(3), False)
        self.top_down3 = C2f(c512 + c256, c256, n_(3), False)
        self.down3 = Conv(c256, c256, 3, 2)
        self.bottom_up4 = C2f(c256 + c512, c512, n_(3), False)
        self.down4 = Conv(c512, c512, 3, 2)
        self.bottom_up5 = C2f(c512 + c1024, c1024, n_(3), False)
        self.detect = Detect((c256, c512, c1024), imgsz)
        self.imgsz = imgsz

    def features(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.top_down4(torch.cat((self.up(p5), p4), 1))
        n3 = self.top_down3(torch.cat((self.up(t4), p3), 1))
        n4 = self.bottom_up4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bottom_up5(torch.cat((self.down4(n4), p5), 1))
        return n3, n4, n5

    def forward(self, x):
        return self.detect(self.features(x))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibration_images(count: int, imgsz: int, generator: torch.Generator) -> torch.Tensor:
    """Image-like frames in [0, 1] from the seed: smooth colour fields, a few flat rectangles, fine noise,
    and letterbox bands of grey 127 on some (what the pipeline feeds a 16:9 camera)."""
    low = torch.rand((count, 3, 6, 6), generator=generator)
    images = nn.functional.interpolate(low, size=(imgsz, imgsz), mode="bilinear", align_corners=False)
    for i in range(count):
        for _ in range(6):
            x0, y0 = (int(v) for v in torch.randint(0, imgsz - 32, (2,), generator=generator))
            w, h = (int(v) for v in torch.randint(16, imgsz // 3, (2,), generator=generator))
            images[i, :, y0 : y0 + h, x0 : x0 + w] = torch.rand((3, 1, 1), generator=generator)
        if i % 2:
            band = imgsz // 8 + int(torch.randint(0, imgsz // 8, (1,), generator=generator))
            images[i, :, :band] = images[i, :, -band:] = 127 / 255
    images += 0.03 * torch.randn(images.shape, generator=generator)
    return images.clamp_(0, 1)


@torch.no_grad()
def calibrate(model: YOLOv8m, images: torch.Tensor) -> None:
    """BatchNorm statistics from ``images`` (each layer's activations zero-mean, unit-variance on them);
    the last class convolutions scaled and biased (each level's logits zero-mean with spread LOGIT_STD);
    and the score's shift, so that on a typical frame about ANCHORS_PER_IMAGE anchors have a best class
    score above SCORE_TARGET."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for chunk in images.split(4):
        model(chunk)
    model.eval()
    feats = [model.features(chunk) for chunk in images.split(4)]
    feats = [torch.cat(level) for level in zip(*feats)]
    heads = [seq[-1] for seq in model.detect.cls]
    logits = model.detect.logits(feats)
    for head, level in zip(heads, logits):  # zero-mean, LOGIT_STD spread per level and class
        centred = level - head.bias.view(1, -1, 1)
        scale = LOGIT_STD / centred.std(dim=(0, 2)).clamp_min(1e-6)
        head.weight.mul_(scale.view(-1, 1, 1, 1))
        head.bias.copy_(-centred.mean(dim=(0, 2)) * scale)
    detect = model.detect
    best = detect.standardized(torch.cat(detect.logits(feats), 2)).amax(1)  # [N, A]: each anchor's best class
    cut = float(best.topk(ANCHORS_PER_IMAGE, dim=1).values[:, -1].median())  # per image, the k-th best anchor
    detect.score_shift = math.log(SCORE_TARGET / (1 - SCORE_TARGET)) - detect.score_scale * cut


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> None:
    """Fold every Conv's BatchNorm into its convolution (the BN becomes an identity)."""
    for m in model.modules():
        if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
            bn, conv = m.bn, m.conv
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            m.conv, m.bn = fused, nn.Identity()


def build(seed: int = 0, imgsz: int = 640, calibration: int = 16) -> YOLOv8m:
    """The random, calibrated, BN-folded network in eval mode (deterministic for a seed on one machine)."""
    torch.manual_seed(seed)
    model = YOLOv8m(imgsz)
    generator = torch.Generator().manual_seed(seed + 1)
    calibrate(model, calibration_images(calibration, imgsz, generator))
    fold_batchnorm(model)
    return model.eval().requires_grad_(False)


def export(model: YOLOv8m, path: Path) -> None:
    """ONNX opset 17, ``images`` [N, 3, S, S] -> ``output0`` [N, 84, A], dynamic batch (legacy exporter)."""
    import onnx
    import onnx.numpy_helper

    dummy = torch.zeros(1, 3, model.imgsz, model.imgsz)
    with warnings.catch_warnings():  # "legacy TorchScript-based exporter": chosen (no onnxscript needed)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(path), input_names=["images"], output_names=["output0"], opset_version=17,
                          dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(path))
    graph = proto.graph
    # Constant nodes become initializers: onnx2torch makes initializers (not Constant nodes) parameters,
    # and the torch backend keeps the small shape and scale ones in host memory (CUDA graph capture).
    constants = [n for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    for node in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    # Splits into equal parts lose their sizes input (equal parts is what ONNX Split means without it):
    # onnx2torch reads a sizes tensor with .tolist(), a device sync that forbids CUDA graph capture.
    initializers = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Split" and len(node.input) == 2 and node.input[1] in initializers:
            if len(set(onnx.numpy_helper.to_array(initializers[node.input[1]]).tolist())) == 1:
                del node.input[1]
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # The exporter cannot name the output's static dims through the Reshape(-1, ...) of the batch.
    dims = graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = 4 + NUM_CLASSES
    dims[2].Clear()
    dims[2].dim_value = sum(model.detect.cells)
    meta = {"description": "benchmark-only YOLOv8m-class detector, RANDOM weights (throughput only)",  # Ultralytics-like;
            "task": "detect", "stride": "32", "imgsz": f"[{model.imgsz}, {model.imgsz}]",                 # nothing here reads it
            "names": "{" + ", ".join(f"{i}: '{n.replace('_', ' ')}'" for i, n in enumerate(COCO)) + "}"}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.save(proto, str(path))


def disagreement(got, want) -> str | None:
    """Why two outputs of the model (numpy, [N, 84, A]) are not the same up to float32 rounding, or None.
    Kernels differ between runtimes and CPUs by ~0.05 px on boxes and ~1e-4 on scores; a broken
    export is off by orders of magnitude more."""
    import numpy as np

    if got.shape != want.shape:
        return f"shape {list(got.shape)} != {list(want.shape)}"
    box, score = float(np.abs(got[:, :4] - want[:, :4]).max()), float(np.abs(got[:, 4:] - want[:, 4:]).max())
    if not (box < 0.5 and score < 1e-3):
        return f"max |diff| {box:.3g} px on boxes, {score:.3g} on scores"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_yolov8m.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the .onnx to write (atomically: a temporary file, then a rename)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imgsz", type=int, default=640, help="input size (a multiple of 32)")
    args = parser.parse_args(argv)
    if args.imgsz < 64 or args.imgsz % 32:
        parser.error(f"--imgsz {args.imgsz}: not a multiple of 32 (at least 64)")
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        print(f"bench_yolov8m.py: ERROR: needs onnx ({exc}); use .venv-convert/bin/python, or python3 on the GPU machine", file=sys.stderr)
        return 2
    started = time.perf_counter()
    model = build(args.seed, args.imgsz)
    params = parameter_count(model)
    anchors = sum(model.detect.cells)
    print(f"bench_yolov8m: YOLOv8m-class, RANDOM weights (seed {args.seed}, throughput only): {params / 1e6:.2f} M parameters "
          f"(BN folded), {args.imgsz}x{args.imgsz} -> [N, {4 + NUM_CLASSES}, {anchors}]; built in {time.perf_counter() - started:.1f} s", flush=True)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        t0 = time.perf_counter()
        export(model, tmp)
        line = f"exported in {time.perf_counter() - t0:.1f} s"
        try:
            import onnxruntime as ort

            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            x = calibration_images(2, args.imgsz, torch.Generator().manual_seed(args.seed + 2))
            got = session.run(["output0"], {"images": x.numpy()})[0]
            problem = disagreement(got, model(x).numpy())
            if problem:
                print(f"bench_yolov8m.py: ERROR: the exported model disagrees with torch in ONNX Runtime: {problem}", file=sys.stderr)
                return 1
            above = (got[:, 4:].max(1) > SCORE_TARGET).sum(1).tolist()
            line += f"; ONNX Runtime matches torch, anchors scoring > {SCORE_TARGET} per test image: {above}"
        except ImportError:
            line += "; onnxruntime not installed: not run"
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # a failed or interrupted run leaves nothing behind
    print(f"bench_yolov8m: wrote {out} ({out.stat().st_size / 1e6:.1f} MB); {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
