"""Lung-nodule detection on CT: 3D U-Net candidates + 3D ResNet false-positive reduction.

`train_detector` (both stages through `ai_engine.training`), `NoduleDetector` (inference from a
model folder), `findings_on_source` (FINDINGS + label map on the source grid),
`evaluate_detector` (FROC). CLI: `python -m ai_engine detection {train,evaluate,predict}`.
"""
