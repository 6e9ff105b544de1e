# The seed port's usage example, unchanged but for the import line.
import torch

from mnv4 import mobilenetv4_large, summary

model = mobilenetv4_large(pretrained=False, num_classes=1000)
model.eval()
x = torch.randn(1, 3, 224, 224)
output = model(x)
print(output.shape)
summary(model, input_size=(3, 224, 224))
