"""Where the training images live and the order they are drawn in, apart from the loop that trains on them: on
the accelerator when they fit, else read from the host batch by batch; one seeded shuffle per pass."""

from __future__ import annotations

import torch

from eikd_edge.disk_images import ImageRows


def stays_on_host(images: ImageRows, device: torch.device) -> bool:
    """A set larger than a quarter of the accelerator's free memory is read from the host (its file in the run
    folder) batch by batch; a smaller one is copied to the device once, where gathering a batch costs nothing."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() > free // 4


def gather_batch(images: ImageRows, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One batch on the device: gathered where the images live; from the host through pinned memory, so the
    copy runs asynchronously with the work already queued on the device."""
    if images.device.type == device.type:
        return images[ids.to(images.device)]
    return images[ids.cpu()].pin_memory().to(device, non_blocking=True)


def pass_order(seed: int, first_pass: int, passes: int, used: int, n_images: int, device: torch.device) -> torch.Tensor:
    """A round's image order: one shuffle per pass, each cut to its `used` images, its whole batches (the last
    partial batch of a pass is dropped, as a one-pass round drops it)."""
    shuffles = [
        torch.randperm(n_images, generator=torch.Generator().manual_seed(seed + first_pass + j))[:used]
        for j in range(passes)
    ]
    return torch.cat(shuffles).to(device)
