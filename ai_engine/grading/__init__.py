"""Multimodal brain-tumor grading (T1, T1c, T2, FLAIR -> grade 1-3) with calibrated
probabilities, explanations and deployable model folders.

`train_grading` (shared trainer + temperature scaling), `load_grading_model` (any model
folder format), `evaluate_grading` (METRICS.json, pointing game), `explain_study`.
"""
