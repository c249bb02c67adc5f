"""Evaluation metrics of ai_engine models.

`froc` (nodule detection, LUNA16 rules: `froc`, `match_detections`, `plot_froc`, `FP_RATES`);
`classification` (accuracy, macro-F1, AUC, confusion, ECE).
"""
