"""Post-processing: hand-worked toys and a dense naive reference of the standard algorithm."""

import pytest
import torch
import torch.nn.functional as F

from axial_deeplab.modeling.postprocessing import (
    class_probabilities,
    find_instance_centers,
    get_instances,
    get_panoptic_segmentation,
    get_panoptic_segmentation_batch,
    group_pixels,
)

KW = dict(thing_ids={1, 2}, label_divisor=1000, void_label=-1)


def test_centers_threshold_nms_and_topk():
    heat = torch.zeros(1, 7, 9)
    heat[0, 1, 1] = 0.9
    heat[0, 1, 2] = 0.8  # suppressed by its 3x3 neighbour 0.9
    heat[0, 5, 7] = 0.5
    heat[0, 5, 2] = 0.05  # below threshold 0.1
    heat[0, 3, 5] = 0.6
    got = find_instance_centers(heat, threshold=0.1, nms_kernel=3, top_k=None)
    assert got.tolist() == [[1, 1], [3, 5], [5, 7]]  # row-major order
    # top_k = 2 keeps scores strictly above the 2nd best (0.6): only 0.9
    assert find_instance_centers(heat, threshold=0.1, nms_kernel=3, top_k=2).tolist() == [[1, 1]]
    # top_k larger than the survivors keeps them all
    assert len(find_instance_centers(heat, threshold=0.1, nms_kernel=3, top_k=5)) == 3


def test_toy_panoptic_by_hand():
    # 1 x 8 strip: classes [0 0 1 1 1 2 2 0]; class 0 is stuff, 1 and 2 things.
    sem = torch.tensor([[[0, 0, 1, 1, 1, 2, 2, 0]]])
    heat = torch.zeros(1, 1, 8)
    heat[0, 0, 3] = 1.0  # centre A at x = 3
    heat[0, 0, 6] = 0.9  # centre B at x = 6
    off = torch.zeros(2, 1, 8)
    off[1, 0, 4] = 2.0  # pixel 4 votes for x = 6 -> B
    pan, centers = get_panoptic_segmentation(
        sem, heat, off, stuff_area=3, threshold=0.1, nms_kernel=3, top_k=None, **KW
    )
    assert centers.tolist() == [[0, 3], [0, 6]]
    # A owns pixels 2, 3 (class 1) -> 1001. B owns 4 (class 1), 5, 6 (class 2): majority 2 ->
    # 2001 (first instance of class 2). Stuff class 0 has 3 px >= stuff_area 3 -> 0.
    assert pan.tolist() == [[[0, 0, 1001, 1001, 2001, 2001, 2001, 0]]]
    pan, _ = get_panoptic_segmentation(
        sem, heat, off, stuff_area=4, threshold=0.1, nms_kernel=3, top_k=None, **KW
    )
    assert pan[0, 0, 0].item() == -1  # 3 px of stuff < 4 -> void


def test_no_centers_leaves_things_void():
    sem = torch.tensor([[[1, 1, 0]]])
    pan, centers = get_panoptic_segmentation(
        sem, torch.zeros(1, 1, 3), torch.zeros(2, 1, 3), stuff_area=1, **KW
    )
    assert centers.shape == (0, 2) and pan.tolist() == [[[-1, -1, 0]]]


def _dense_reference(sem, heat, off, thing_ids, divisor, stuff_area, void, th, k):
    """The standard algorithm, written plainly: K x H x W distances, loops over instances."""
    h = F.threshold(heat.clone(), th, -1)
    pooled = F.max_pool2d(h[None], k, stride=1, padding=k // 2)[0]
    h[h != pooled] = -1
    centers = torch.nonzero(h[0] > 0)
    pan = torch.full_like(sem, void)
    thing = torch.zeros_like(sem, dtype=torch.bool)
    for t in thing_ids:
        thing |= sem == t
    if len(centers):
        ys, xs = torch.meshgrid(
            torch.arange(sem.shape[1]), torch.arange(sem.shape[2]), indexing="ij"
        )
        loc = torch.stack([ys + off[0], xs + off[1]])  # [2, H, W]
        dist = ((centers[:, :, None, None] - loc[None].double()) ** 2).sum(1)  # [K, H, W] exact
        ins = dist.argmin(0)[None]
        counter = {}
        for i in range(len(centers)):
            mask = (ins == i) & thing
            if mask.any():
                c = int(torch.mode(sem[mask]).values)
                counter[c] = counter.get(c, 0) + 1
                pan[mask] = c * divisor + counter[c]
    for c in torch.unique(sem).tolist():
        mask = (sem == c) & ~thing
        if c not in thing_ids and mask.sum() >= stuff_area:
            pan[mask] = c * divisor
    return pan


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.5), (2, 0.5), (3, 0.97), (4, 0.97)])
def test_matches_dense_reference_on_random_maps(seed, threshold):
    # threshold 0.5: half the pixels are candidates, the whole map is max-pooled; 0.97: only the
    # candidates' windows are searched.
    g = torch.Generator().manual_seed(seed)
    sem = (
        torch.randint(0, 4, (1, 6, 9), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    )
    heat = torch.rand(1, 24, 36, generator=g)
    off = torch.randn(2, 24, 36, generator=g) * 3
    got, _ = get_panoptic_segmentation(
        sem, heat, off, stuff_area=20, threshold=threshold, nms_kernel=5, top_k=None, **KW
    )
    ref = _dense_reference(sem, heat, off, {1, 2}, 1000, 20, -1, threshold, 5)
    assert got.dtype == torch.int64
    assert torch.equal(got, ref)
    assert len(torch.unique(got)) > 4  # several instances and stuff regions, not a trivial map


def test_batch_equals_per_image():
    g = torch.Generator().manual_seed(3)
    sem = torch.randint(0, 3, (2, 12, 16), generator=g)
    heat = torch.rand(2, 1, 12, 16, generator=g)
    off = torch.randn(2, 2, 12, 16, generator=g)
    kw = dict(stuff_area=5, threshold=0.3, nms_kernel=3, top_k=10, **KW)
    pan, centers = get_panoptic_segmentation_batch(sem, heat, off, **kw)
    for i in range(2):
        one, c = get_panoptic_segmentation(sem[i : i + 1], heat[i], off[i], **kw)
        assert torch.equal(pan[i : i + 1], one) and torch.equal(centers[i], c)


def test_instance_scores():
    pan = torch.tensor([[1001, 1001, 0, 2001]])  # [H=1, W=4]
    prob = torch.tensor(
        [[[0.2, 0.4, 0.9, 0.1]], [[0.8, 0.6, 0.1, 0.0]], [[0.0, 0.0, 0.0, 0.9]]]
    )  # [3, 1, 4]
    heat = torch.tensor([[[0.5, 0.7, 0.0, 0.25]]])
    out = get_instances(pan, prob, heat, thing_ids={1, 2}, label_divisor=1000)
    assert out["labels"].tolist() == [1001, 2001] and out["classes"].tolist() == [1, 2]
    # 1001: mean class-1 prob (0.8 + 0.6) / 2 = 0.7; mean pixel x = 0.5 -> int 0 -> heat 0.5
    # 2001: prob 0.9 x heat 0.25
    torch.testing.assert_close(out["scores"], torch.tensor([0.35, 0.225]))
    assert out["masks"].tolist() == [[[True, True, False, False]], [[False, False, False, True]]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    g = torch.Generator().manual_seed(4)
    sem = torch.randint(0, 4, (1, 40, 50), generator=g)
    heat = torch.rand(1, 40, 50, generator=g)
    off = torch.randn(2, 40, 50, generator=g) * 4
    kw = dict(stuff_area=10, threshold=0.5, nms_kernel=5, top_k=50, **KW)
    cpu, _ = get_panoptic_segmentation(sem, heat, off, **kw)
    gpu, _ = get_panoptic_segmentation(sem.cuda(), heat.cuda(), off.cuda(), **kw)
    assert torch.equal(cpu, gpu.cpu())


def test_nearest_centre_is_exact_on_near_ties():
    # Centres (0, 0) and (0, 2); a pixel at (3000, 0) votes for (3000, 1 + 2^-23): squared
    # distances 9e6 + (1 + 2^-23)^2 and 9e6 + (1 - 2^-23)^2 both round to 9000001 in float32
    # (as detectron2 computes them, a tie that goes to centre 0), but centre 1 is nearer.
    centers = torch.tensor([[0, 0], [0, 2]])
    y = torch.tensor([3000.0])
    x = torch.tensor([1.0 + 2.0**-23])
    float32_distances = (y[:, None] - centers[:, 0]) ** 2 + (x[:, None] - centers[:, 1]) ** 2
    assert float32_distances[0, 0] == float32_distances[0, 1]  # the float32 tie
    assert group_pixels(centers, y, x).tolist() == [1]
    assert group_pixels(centers, y, torch.tensor([1.0])).tolist() == [0]  # a true tie: lower index


def test_class_probabilities_computed_once_per_image():
    """The softmax of an image's logits is kept in its outputs: the second caller (of the AP
    metric, the Cityscapes writer, the pictures) gets the same tensor, not a new softmax."""
    logits = torch.randn(5, 4, 6, dtype=torch.float64)
    outputs = {"semantic": logits}
    prob = class_probabilities(outputs)
    assert prob.dtype == torch.float32 and prob.shape == (5, 4, 6)
    torch.testing.assert_close(prob, logits.float().softmax(0))
    assert class_probabilities(outputs) is prob and outputs["semantic_prob"] is prob
