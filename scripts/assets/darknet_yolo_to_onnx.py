"""Darknet YOLOv3-tiny (cfg + weights) -> ONNX, decoded output [B, N, 85] =
(cx, cy, w, h in input pixels, objectness, 80 class probs). Needs torch, onnx, onnxslim.
Usage: python darknet_yolo_to_onnx.py yolov3-tiny.cfg yolov3-tiny.weights out.onnx [416]"""
import sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F, onnx, onnxslim
from onnx import helper

def parse_cfg(path):
    blocks = []
    for line in open(path):
        line = line.split('#')[0].strip()
        if not line: continue
        if line.startswith('['): blocks.append({'type': line[1:-1]})
        else: k, v = line.split('=', 1); blocks[-1][k.strip()] = v.strip()
    return blocks[1:]  # drop [net]

class MaxPoolSame(nn.Module):  # darknet maxpool size=2 stride=1 keeps H,W (pads right/bottom)
    def forward(self, x): return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode='replicate'), 2, 1)

class Darknet(nn.Module):
    def __init__(self, cfg, size):
        super().__init__()
        self.blocks, self.size, self.mods, chans, c = parse_cfg(cfg), size, nn.ModuleList(), [], 3
        for b in self.blocks:
            t = b['type']
            if t == 'convolutional':
                bn, f, k = int(b.get('batch_normalize', 0)), int(b['filters']), int(b['size'])
                m = nn.Sequential()
                m.add_module('conv', nn.Conv2d(c, f, k, int(b['stride']), (k - 1) // 2 if int(b.get('pad', 0)) else 0, bias=not bn))
                if bn: m.add_module('bn', nn.BatchNorm2d(f, eps=1e-5))
                if b['activation'] == 'leaky': m.add_module('act', nn.LeakyReLU(0.1))
                c = f
            elif t == 'maxpool':
                m = nn.MaxPool2d(int(b['size']), int(b['stride'])) if int(b['stride']) > 1 else MaxPoolSame()
            elif t == 'upsample':
                m = nn.Upsample(scale_factor=int(b['stride']), mode='nearest')
            elif t == 'route':
                b['_idx'] = [i if i >= 0 else len(chans) + i for i in map(int, b['layers'].split(','))]
                c, m = sum(chans[i] for i in b['_idx']), nn.Identity()
            elif t == 'yolo':
                anc = np.array([float(a) for a in b['anchors'].split(',')]).reshape(-1, 2)
                b['_anchors'], b['_nc'], m = anc[[int(i) for i in b['mask'].split(',')]], int(b['classes']), nn.Identity()
            else: raise ValueError(t)
            self.mods.append(m); chans.append(c)

    def load_weights(self, path):
        with open(path, 'rb') as fh:
            major, minor, _ = np.fromfile(fh, np.int32, 3)
            np.fromfile(fh, np.int64 if major * 10 + minor >= 2 else np.int32, 1)  # 'seen'
            w = np.fromfile(fh, np.float32)
        o = 0
        def take(t):
            nonlocal o
            t.data.copy_(torch.from_numpy(w[o:o + t.numel()]).view_as(t)); o += t.numel()
        for b, m in zip(self.blocks, self.mods):
            if b['type'] != 'convolutional': continue
            for t in ((m.bn.bias, m.bn.weight, m.bn.running_mean, m.bn.running_var) if hasattr(m, 'bn') else (m.conv.bias,)): take(t)
            take(m.conv.weight)
        assert o == len(w), (o, len(w))

    def forward(self, x):
        outs, dets = [], []
        for b, m in zip(self.blocks, self.mods):
            if b['type'] == 'route': x = torch.cat([outs[i] for i in b['_idx']], 1)
            elif b['type'] == 'yolo':
                na, nc = len(b['_anchors']), b['_nc']; bs, _, h, w = x.shape
                p = x.view(bs, na, nc + 5, h, w).permute(0, 1, 3, 4, 2)
                gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
                grid = torch.stack((gx, gy), -1).view(1, 1, h, w, 2).float()
                anc = torch.tensor(b['_anchors'], dtype=torch.float32).view(1, na, 1, 1, 2)
                xy = (p[..., :2].sigmoid() + grid) * (self.size / h)
                dets.append(torch.cat((xy, p[..., 2:4].exp() * anc, p[..., 4:].sigmoid()), -1).reshape(bs, -1, nc + 5))
            else: x = m(x)
            outs.append(x)
        return torch.cat(dets, 1)

def pad_into_maxpool(model):  # Pad(edge)+MaxPool(2,1) == MaxPool(2,1,pads=[0,0,1,1]); simpler for TensorRT
    g = model.graph
    for p in [n for n in g.node if n.op_type == 'Pad']:
        mp = next(n for n in g.node if p.output[0] in n.input); assert mp.op_type == 'MaxPool'
        mp.input[0] = p.input[0]; g.node.remove(p)
        for a in [a for a in mp.attribute if a.name == 'pads']: mp.attribute.remove(a)
        mp.attribute.append(helper.make_attribute('pads', [0, 0, 1, 1]))
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]: g.initializer.remove(init)
    return model

if __name__ == '__main__':
    cfg, weights, out = sys.argv[1:4]; size = int(sys.argv[4]) if len(sys.argv) > 4 else 416
    net = Darknet(cfg, size).eval(); net.load_weights(weights)
    torch.onnx.export(net, (torch.zeros(1, 3, size, size),), out, input_names=['images'], output_names=['output'],
                      dynamic_axes={'images': {0: 'batch'}, 'output': {0: 'batch'}}, opset_version=17, dynamo=False)
    m = pad_into_maxpool(onnxslim.slim(out)); onnx.checker.check_model(m); onnx.save(m, out); print('wrote', out)
