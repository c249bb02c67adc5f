"""Knowledge distillation: a small student learns from a teacher's softened probabilities.

Loss (Hinton et al. 2015): `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) *
CE(s, y)`. The T^2 factor keeps the soft-target gradients on the scale of the hard-label
ones when T changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DistillationLoss", "count_parameters", "pick_student", "student_network"]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class DistillationLoss(torch.nn.Module):
    """Temperature-scaled KL to the teacher plus a hard-label loss.

    Args:
        temperature: softening temperature T (> 0).
        alpha: weight of the soft (teacher) term in [0, 1].
        hard_loss: loss on the labels, `hard_loss(student_logits, labels)`; cross-entropy
            by default (pass the grading focal loss to keep class weights).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.7,
        hard_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hard_loss = hard_loss or (lambda s, y: F.cross_entropy(s, y.long().view(-1)))

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits.detach() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        hard = self.hard_loss(student_logits, labels)
        return self.alpha * soft + (1.0 - self.alpha) * hard


def student_network(
    network: str, teacher_kwargs: dict, width_factor: float = 0.5
) -> tuple[str, dict]:
    """Registry name and kwargs of a narrower student for a teacher network.

    Widths are scaled by `width_factor` (0.5 gives about a quarter of the parameters, since
    a convolution's weights grow with in x out channels). ResNet and ViT students keep the
    teacher's family (the ViT also halves its depth); a DenseNet-121 teacher, whose
    registry builder has no width knobs, gets a ResNet student.

    Raises:
        ValueError: the network family is unknown.
    """
    kw = dict(teacher_kwargs)

    def scale(n: int, multiple: int = 1) -> int:
        return max(multiple, round(n * width_factor / multiple) * multiple)

    if network == "resnet3d":
        # multiples of 8 channels: odd widths hit slow CPU convolution paths
        kw["block_inplanes"] = [scale(c, 8) for c in kw.get("block_inplanes", (16, 32, 64, 128))]
        return network, kw
    if network == "densenet121_3d":
        student = {
            "in_channels": kw.get("in_channels", 1),
            "num_classes": kw.get("num_classes", 2),
            "layers": [1, 1, 1, 1],
            "block_inplanes": [scale(c, 8) for c in (64, 128, 256, 512)],
            "conv1_t_size": 3,
            "conv1_t_stride": 1,
            "no_max_pool": True,
        }
        return "resnet3d", student
    if network == "vit_classifier":
        heads = kw.get("num_heads", 4)
        kw["hidden_size"] = scale(kw.get("hidden_size", 96), heads)
        kw["mlp_dim"] = scale(kw.get("mlp_dim", 192))
        kw["num_layers"] = max(1, kw.get("num_layers", 4) // 2)
        return network, kw
    raise ValueError(f"no student recipe for network {network!r}")


def pick_student(
    network: str, teacher_kwargs: dict, width_factor: float = 0.5, max_param_ratio: float = 0.25
) -> dict[str, Any]:
    """The widest student from `student_network` with <= `max_param_ratio` of the teacher's
    parameters (the width factor shrinks by 15% until it fits).

    Returns:
        `{"network", "kwargs", "teacher_parameters", "student_parameters", "parameter_ratio",
        "width_factor"}`.

    Raises:
        ValueError: no such student within 20 shrinking steps.
    """
    from ai_engine.networks import build_network

    teacher = count_parameters(build_network(network, **teacher_kwargs))
    factor = width_factor
    for _ in range(20):
        name, kwargs = student_network(network, teacher_kwargs, factor)
        student = count_parameters(build_network(name, **kwargs))
        if student <= max_param_ratio * teacher:
            return {
                "network": name,
                "kwargs": kwargs,
                "teacher_parameters": teacher,
                "student_parameters": student,
                "parameter_ratio": student / teacher,
                "width_factor": factor,
            }
        factor *= 0.85
    raise ValueError(f"no student with <= {max_param_ratio} of the teacher's {teacher} parameters")
