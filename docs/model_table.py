"""Print the per-variant table of docs/model.md: parameters, MACs, preprocessing, feature maps."""
import mnv4
from mnv4.model import VARIANTS

print("| variant | params | default res | MACs @ default (G) | crop_pct | mean/std | features_only maps (channels@reduction) |")
print("|---|---:|---:|---:|---:|---|---|")
for name in VARIANTS:
    model = mnv4.create_model(name)
    pre = model.preprocessing
    result = mnv4.profile(model, (3, pre.resolution, pre.resolution))
    backbone = mnv4.create_model(name, features_only=True)
    maps = ", ".join(f"{c}@{r}" for c, r in zip(backbone.feature_channels, backbone.feature_reductions))
    norm = "Inception 0.5/0.5" if pre.mean[0] == 0.5 else "ImageNet"
    print(f"| {name} | {result.params:,} | {pre.resolution} | {result.macs / 1e9:.3f} | {pre.crop_pct} | {norm} | {maps} |")
