"""Smoke check of the built assets (run by `scripts/fetch-assets --check` inside .venv-convert).

Checks, with onnxruntime on CPU (2 threads) and the reference pre/post-processing of the
models-and-media reference (Appendix C):
  * labels/coco.txt has 80 names, labels/imagenet.txt 1000 in standard order;
  * yolov3_tiny_416 and _320 have the expected I/O (images [B,3,S,S] -> output [B,N,85]);
  * yolov3_tiny_416 on media/bikes.mp4 frame 120 finds a person and a bicycle;
  * efficientnet_lite0 on media/chelsea.png gives a cat class (281 tabby / 282 tiger cat / 285 Egyptian cat) top-1.
Prints one line per check; exits 1 on the first failure.

Usage: smoke_check.py ASSETS_DIR
"""
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image

CAT_CLASSES = {281, 282, 285}


def fail(msg):
    print(f'smoke_check: FAIL: {msg}', file=sys.stderr)
    sys.exit(1)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])


def detect(sess, bgr, S=416, conf=0.3, iou=0.45):          # reference Appendix C
    h, w = bgr.shape[:2]; r = min(S / h, S / w); nh, nw = round(h * r), round(w * r)
    canvas = np.full((S, S, 3), 127, np.uint8); dy, dx = (S - nh) // 2, (S - nw) // 2
    canvas[dy:dy + nh, dx:dx + nw] = cv2.resize(bgr, (nw, nh))
    x = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    p = sess.run(None, {'images': x})[0][0]
    cls = p[:, 5:].argmax(1); sc = p[:, 4] * p[:, 5:].max(1); k = sc > conf
    p, cls, sc = p[k], cls[k], sc[k]
    xywh = np.stack([(p[:, 0] - p[:, 2] / 2 - dx) / r, (p[:, 1] - p[:, 3] / 2 - dy) / r, p[:, 2] / r, p[:, 3] / r], 1)
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), sc.tolist(), cls.tolist(), conf, iou)
    return [(int(cls[i]), float(sc[i]), xywh[i]) for i in np.array(keep).flatten()]


def classify_prep(pil_img):                                  # reference Appendix C
    im = pil_img.convert('RGB'); w, h = im.size; s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC); w, h = im.size
    l, t = (w - 224) // 2, (h - 224) // 2
    a = (np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32) - 127.0) / 128.0
    return a.transpose(2, 0, 1)[None]


def read_frame(path, index):
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        fail(f'{path}: cv2.VideoCapture cannot open it')
    frame = None
    for _ in range(index + 1):                               # sequential read: exact frame index
        ok, frame = cap.read()
        if not ok:
            fail(f'{path}: could not read frame {index}')
    cap.release()
    return frame


def main(assets):
    p = lambda rel: os.path.join(assets, rel)
    coco = open(p('labels/coco.txt'), encoding='utf-8').read().splitlines()
    imnet = open(p('labels/imagenet.txt'), encoding='utf-8').read().splitlines()
    if len(coco) != 80 or coco[:2] != ['person', 'bicycle']:
        fail(f'labels/coco.txt: {len(coco)} lines, starts {coco[:2]}')
    if len(imnet) != 1000 or [imnet[i].split(',')[0] for i in (0, 1, 281, 282, 285)] != \
            ['tench', 'goldfish', 'tabby', 'tiger cat', 'Egyptian cat']:
        fail('labels/imagenet.txt: not 1000 names in standard ILSVRC-2012 order')
    print(f'ok  labels: coco.txt 80 names, imagenet.txt 1000 names (281={imnet[281]!r}, 285={imnet[285]!r})')

    for size, n in ((416, 2535), (320, 1500)):
        sess = session(p(f'models/yolov3_tiny_{size}.onnx'))
        i, o = sess.get_inputs()[0], sess.get_outputs()[0]
        y = sess.run(None, {i.name: np.zeros((1, 3, size, size), np.float32)})[0]
        if i.name != 'images' or o.name != 'output' or y.shape != (1, n, 85):
            fail(f'models/yolov3_tiny_{size}.onnx: I/O {i.name}{i.shape} -> {o.name}{o.shape}, ran {y.shape}')
        print(f'ok  yolov3_tiny_{size}.onnx: {i.name}{i.shape} -> {o.name}{o.shape}')

    sess = session(p('models/yolov3_tiny_416.onnx'))
    dets = detect(sess, read_frame(p('media/bikes.mp4'), 120))
    found = sorted(((coco[c], s) for c, s, _ in dets), key=lambda t: -t[1])
    names = {c for c, _ in found}
    desc = ', '.join(f'{c} {s:.2f}' for c, s in found)
    if not {'person', 'bicycle'} <= names:
        fail(f'yolov3_tiny_416 on bikes.mp4 frame 120: expected person and bicycle, got [{desc}]')
    print(f'ok  yolov3_tiny_416 on bikes.mp4 frame 120: {desc}')

    sess = session(p('models/efficientnet_lite0.onnx'))
    logits = sess.run(None, {'input': classify_prep(Image.open(p('media/chelsea.png')))})[0][0]
    prob = np.exp(logits - logits.max()); prob /= prob.sum()
    top = np.argsort(-prob)[:3]
    desc = ', '.join(f'{i} {imnet[i]!r} {prob[i]:.2f}' for i in top)
    if int(top[0]) not in CAT_CLASSES:
        fail(f'efficientnet_lite0 on chelsea.png: top-1 is not a cat class: {desc}')
    print(f'ok  efficientnet_lite0 on chelsea.png: top-3 {desc}')
    print('smoke_check: all checks passed')


if __name__ == '__main__':
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
