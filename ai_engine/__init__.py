"""ai_engine: the platform's ML library (no Django outside `ai_engine.registry`).

Subpackages: `io` (volumes from DICOM/NIfTI), `data` (phantoms, datalists, datasets),
`transforms`, `networks`, `training`, `detection`, `grading`, `evaluation`, `explain`,
`deploy` (export, quantization, distillation), `active_learning`. CLI: `python -m ai_engine`.
"""
