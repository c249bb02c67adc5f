"""Deployable models: TorchScript/ONNX export with parity checks, INT8 quantization for the
CPU, knowledge distillation; every result is a model folder marked with how it was made.

`export_folder`, `quantize_folder` (in `ai_engine.deploy.folders`) work on any task's model
folder; `python -m ai_engine export|quantize|distill` are the command lines.
"""
