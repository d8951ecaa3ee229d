"""One rank of the distributed-sampling tests (run by ``torchrun`` from tests/test_diffusion_distributed.py).

``distributed_worker.py OUT_DIR cases``: samples every case of ``CASES`` on a tiny UNet and rank 0
saves the gathered images as ``OUT_DIR/<case>.pt``; the npz case writes per rank. ``... OUT_DIR
fail``: rank 1 raises before the gather, which the others wait in.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from modelkernels.kernels.diffusion.distributed import distributed_sample, init_from_env
from modelkernels.pyimpl.diffusion import make_schedule
from modelkernels.pyimpl.unet import UNet, UNetConditional

# name: (n, sample keyword arguments, one image per model call); the schedule has T = 4, so the
# seed's loop runs 3 steps. The batched UNet's per-image output moves by rounding with the batch size
# (CPU convolutions and matmuls block by it): its case is compared within a tolerance.
CASES: dict[str, tuple[int, dict[str, Any], bool]] = {
    "odd": (5, {"seed": 3}, True),
    "world_above_batch": (1, {"seed": 7}, True),
    "ddim_cfg": (3, {"seed": 1, "method": "ddim", "steps": 3, "eta": 0.5, "labels": [2, 0, 1]}, True),
    "batched_model": (5, {"seed": 3}, False),
}


class PerImage(torch.nn.Module):
    """A model called one image at a time: its output for an image does not depend on the batch."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.image_size, self.c_in = model, model.image_size, model.c_in

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        def one(i: int) -> torch.Tensor:
            if isinstance(self.model, UNetConditional):
                return self.model(x[i:i + 1], t[i:i + 1], None if labels is None else labels[i:i + 1])
            return self.model(x[i:i + 1], t[i:i + 1])
        return torch.cat([one(i) for i in range(x.shape[0])])


def tiny_model(conditional: bool, per_image: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    if conditional:
        model: torch.nn.Module = UNetConditional(c_in=1, c_out=1, time_dim=16, num_classes=3, image_size=8,
                                                 base_channels=4)
    else:
        model = UNet(c_in=1, c_out=1, time_dim=16, image_size=8, base_channels=4)
    return PerImage(model) if per_image else model


def case_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """The sample() keywords of a case (labels as a tensor, the tiny schedule)."""
    out = dict(kw, schedule=make_schedule(num_train_timesteps=4, beta_end=0.2), progress=False, output="float")
    if "labels" in kw:
        out["labels"] = torch.tensor(kw["labels"])
    return out


def main(out_dir: str, mode: str) -> None:
    init_from_env(timeout_s=60)
    rank = torch.distributed.get_rank()
    if mode == "fail":
        if rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        distributed_sample(tiny_model(False), 4, **case_kwargs({"seed": 0}))
        return
    for name, (n, kw, per_image) in CASES.items():
        got = distributed_sample(tiny_model("labels" in kw, per_image), n, **case_kwargs(kw))
        if rank == 0:
            assert got is not None
            torch.save(got, f"{out_dir}/{name}.pt")
    distributed_sample(tiny_model(False), 3, write="npz", out_dir=f"{out_dir}/npz",
                       **dict(case_kwargs({"seed": 3}), output="uint8"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
