"""Reference outputs of detectron2's Panoptic-DeepLab on random weights, for parity checks.

Needs detectron2 (installed from a checkout, e.g. commit c69939aa) and that checkout's
``projects/Panoptic-DeepLab`` (``--detectron2 DIR``); CI never runs this.

    # full size: every model -> OUT/<key>/ (model.pkl, outputs.npz, meta.json), then ours on them
    OMP_NUM_THREADS=2 python tools/parity/detectron2_reference.py --detectron2 /tmp/d2src \
        --out /tmp/d2ref
    OMP_NUM_THREADS=2 python tools/parity/detectron2_compare.py /tmp/d2ref
    # reduced width, small inputs -> tests/fixtures/detectron2/<key>/ (committed)
    python tools/parity/detectron2_reference.py --detectron2 /tmp/d2src --size tiny
    # names and shapes of each full-size checkpoint -> tests/fixtures/detectron2/manifests/
    python tools/parity/detectron2_reference.py --detectron2 /tmp/d2src --manifests

Each reference model is built by detectron2 from its own yaml (``tiny``: narrower, via config
overrides), every batch norm gets running statistics measured on the input (one forward in
training mode) then perturbed, random gammas (0.5..1.5) and betas; every conv bias is random; the
predictors are rescaled to give semantic logits of std 2, offsets of std H/20 pixels, and a centre
bias that leaves a few centres above the threshold (detectron2's init would give near-zero outputs
and no instances). Saved as the zoo saves (``{"model": {name: np.ndarray}, "__author__": ...}``,
backbone-only names for ``imagenet_r52`` as ``R-52.pkl``), then run in eval mode on the input:
raw outputs at input size (``tiny``: at stride 4, before detectron2's final x4 bilinear resize,
align_corners False, offsets x 4; this keeps fixtures small) and detectron2's panoptic map.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "detectron2")
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
PROJECT = "projects/Panoptic-DeepLab/configs"
CITYSCAPES_IMAGE = "cityscapes_panoptic_sample/leftImg8bit/dummy_000000_000000_leftImg8bit.png"
COCO_IMAGE = "coco_panoptic_sample/images/000000439180.jpg"
_CS = f"{PROJECT}/Cityscapes-PanopticSegmentation/panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32"
MODELS = {
    "cityscapes_r52_dc5": dict(
        d2_config=f"{_CS}_crop_512_1024.yaml",
        ours="configs/cityscapes/panoptic_deeplab_r52_dc5_d2.yaml",
        zoo_file="model_final_bd324a.pkl",
        image="cityscapes",
    ),
    "cityscapes_r52_dc5_dsconv": dict(
        d2_config=f"{_CS}_crop_512_1024_dsconv.yaml",
        ours="configs/cityscapes/panoptic_deeplab_r52_dc5_dsconv_d2.yaml",
        zoo_file="model_final_23d03a.pkl",
        image="cityscapes",
    ),
    "coco_r52_dc5_dsconv": dict(
        d2_config=f"{PROJECT}/COCO-PanopticSegmentation/"
        "panoptic_deeplab_R_52_os16_mg124_poly_200k_bs64_crop_640_640_coco_dsconv.yaml",
        ours="configs/coco/panoptic_deeplab_r52_dc5_dsconv_d2.yaml",
        zoo_file="model_final_5e6da2.pkl",
        image="coco",
    ),
    "imagenet_r52": dict(  # the backbone of every model above, as detectron2's R-52.pkl
        d2_config=f"{_CS}_crop_512_1024.yaml",
        ours="configs/cityscapes/panoptic_deeplab_r52_dc5_d2.yaml",
        zoo_file="R-52.pkl",
        image="cityscapes",
        backbone_only=True,
    ),
}
# size -> input (H, W) per image, and the training crop (sets detectron2's ASPP pooling window)
SIZES = {
    "full": {"cityscapes": ((1024, 2048), (512, 1024)), "coco": ((640, 640), (640, 640))},
    "tiny": {"cityscapes": ((64, 128), (32, 64)), "coco": ((64, 64), (32, 32))},
}
# tiny: narrower networks (keys both detectron2 and we have), ASPP rates that fit 4x8 features
TINY_SHARED = {
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 8,
    **{
        f"MODEL.{head}.{key}": value
        for head, widths in (("SEM_SEG_HEAD", (8, 8, 8)), ("INS_EMBED_HEAD", (8, 8, 8)))
        for key, value in zip(
            ("ASPP_CHANNELS", "CONVS_DIM", "HEAD_CHANNELS", "PROJECT_CHANNELS", "ASPP_DILATIONS"),
            (*widths, [4, 8], [1, 2, 3]),
            strict=True,
        )
    },
}


def load_image(kind: str, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """``[H, W, 3]`` float32 RGB 0-255 fed to both models, and how it was made.

    Cityscapes: the sample photo resized (PIL bilinear) to ``size``. COCO: long side resized to
    ``size`` (short side ``int(s * scale + 0.5)``, as detectron2's ``ResizeShortestEdge``), then
    padded bottom/right to ``size`` with the pixel mean (what detectron2's zero padding of the
    normalised image is)."""
    name = CITYSCAPES_IMAGE if kind == "cityscapes" else COCO_IMAGE
    image = Image.open(os.path.join(DATA, name)).convert("RGB")
    h, w = size
    if kind == "cityscapes":
        resized = np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.float32)
        return resized, {"file": f"../shared/data/{name}", "resize": [h, w], "pad": None}
    scale = max(h, w) / max(image.size)
    new = (int(image.size[0] * scale + 0.5), int(image.size[1] * scale + 0.5))
    resized = np.asarray(image.resize(new, Image.BILINEAR), dtype=np.float32)
    out = np.empty((h, w, 3), np.float32)
    out[...] = np.asarray([123.675, 116.28, 103.53], np.float32)
    out[: new[1], : new[0]] = resized
    pad = {"to": [h, w], "value": "pixel mean", "image": [new[1], new[0]]}
    return out, {"file": f"../shared/data/{name}", "resize": [new[1], new[0]], "pad": pad}


def _stub_panopticapi() -> None:
    """The project's dataset mapper imports ``panopticapi.utils.rgb2id`` (not on PyPI); nothing
    here reads data, so a stub stands in when it is missing."""
    try:
        import panopticapi.utils  # noqa: F401
    except ImportError:
        import types

        utils = types.ModuleType("panopticapi.utils")
        utils.rgb2id = None
        sys.modules["panopticapi"] = types.ModuleType("panopticapi")
        sys.modules["panopticapi.utils"] = utils


def d2_config(d2_root: str, spec: dict, size: str, crop: tuple[int, int]):
    from detectron2.config import get_cfg

    _stub_panopticapi()
    from panoptic_deeplab import add_panoptic_deeplab_config

    cfg = get_cfg()
    add_panoptic_deeplab_config(cfg)
    cfg.merge_from_file(os.path.join(d2_root, spec["d2_config"]))
    opts = ["INPUT.CROP.SIZE", list(crop), "MODEL.PANOPTIC_DEEPLAB.PREDICT_INSTANCES", False]
    opts += ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"]
    opts += ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.INS_EMBED_HEAD.NORM", "BN"]
    if size == "tiny":  # no padding to 640 (COCO); stuff area and NMS window for 64-pixel inputs
        opts += ["MODEL.PANOPTIC_DEEPLAB.SIZE_DIVISIBILITY", -1]
        opts += ["MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", 32, "MODEL.PANOPTIC_DEEPLAB.NMS_KERNEL", 7]
        opts += [x for k, v in TINY_SHARED.items() for x in (k, v)]
        res2 = TINY_SHARED["MODEL.RESNETS.RES2_OUT_CHANNELS"]  # bottleneck /4, our stem /2
        opts += ["MODEL.RESNETS.WIDTH_PER_GROUP", res2 // 4]
        opts += ["MODEL.RESNETS.STEM_OUT_CHANNELS", res2 // 2]
    cfg.merge_from_list([str(x) if not isinstance(x, list) else x for x in opts])
    return cfg


def our_opts(size: str, crop: tuple[int, int]) -> list[str]:
    """Our config overrides matching the reference model (tiny widths, pooling window)."""
    opts = []
    for head in ("SEM_SEG_HEAD", "INS_EMBED_HEAD"):
        opts += [f"MODEL.{head}.ASPP_POOL_SIZE", str([crop[0] // 16, crop[1] // 16])]
    if size == "tiny":
        opts += [x for k, v in TINY_SHARED.items() for x in (k, str(v))]
    return opts


def heads_raw(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """detectron2's stride-4 outputs (the ``layers`` of its heads)."""
    features = model.backbone(x)
    center, offset = model.ins_embed_head.layers(features)
    return {"semantic": model.sem_seg_head.layers(features), "center": center, "offset": offset}


@torch.no_grad()
def randomise(model, x: torch.Tensor, gen: torch.Generator) -> None:
    """Batch-norm statistics measured on ``x`` then perturbed, random affine and biases,
    predictors rescaled (see the module docstring)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
        m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch -> its statistics
    model.train()
    heads_raw(model, x)
    model.eval()
    for m in norms:  # mildly off the measured statistics (compounding across ~60 layers)
        c = m.num_features
        m.running_mean += 0.05 * m.running_var.sqrt() * torch.randn(c, generator=gen)
        m.running_var *= 0.9 + 0.2 * torch.rand(c, generator=gen)
        m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (), generator=gen)))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    heads = model.sem_seg_head, model.ins_embed_head, model.ins_embed_head
    names = "predictor", "center_predictor", "offset_predictor"
    for head, name in zip(heads, names, strict=True):
        conv = getattr(head, name)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
    raw = heads_raw(model, x)
    targets = {"semantic": 2.0, "center": 0.3, "offset": x.shape[2] / 80.0}  # offsets x4: H/20
    for (key, std), head, name in zip(targets.items(), heads, names, strict=True):
        conv = getattr(head, name)
        scale = std / float((raw[key] - conv.bias.view(1, -1, 1, 1)).std())
        conv.weight.mul_(scale)
        raw[key] = (raw[key] - conv.bias.view(1, -1, 1, 1)) * scale  # without bias
    fraction = max(0.003, 8.0 / raw["center"].numel())  # of pixels above the threshold
    model.ins_embed_head.center_predictor.bias.fill_(
        0.1 - float(torch.quantile(raw["center"].flatten(), 1.0 - fraction))
    )


def zoo_state(model, backbone_only: bool) -> dict[str, np.ndarray]:
    """The state dict as the zoo's ``.pkl`` holds it (numpy arrays; ``R-52.pkl``: backbone only,
    without the ``backbone.`` prefix)."""
    state = model.state_dict()
    if backbone_only:
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def run_reference(model, image: np.ndarray, backbone_only: bool, size: str) -> tuple[dict, dict]:
    """Eval-mode outputs of ``model`` on ``image`` and the run times (network, post-processing)."""
    x = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # [3, H, W]
    h, w = x.shape[1:]
    with torch.no_grad():
        if backbone_only:
            start = time.perf_counter()
            features = model.backbone(((x - model.pixel_mean) / model.pixel_std)[None])
            seconds = {"network": time.perf_counter() - start}
            return {k: v[0].numpy() for k, v in features.items()}, seconds
        captured: dict = {}
        hooks = [
            model.sem_seg_head.register_forward_hook(lambda m, i, o: captured.update(sem=o[0])),
            model.ins_embed_head.register_forward_hook(
                lambda m, i, o: captured.update(center=o[0], offset=o[1], t=time.perf_counter())
            ),
        ]
        for name in ("predictor",):
            hooks.append(
                getattr(model.sem_seg_head, name).register_forward_hook(
                    lambda m, i, o: captured.update(sem4=o)
                )
            )
        hooks.append(
            model.ins_embed_head.center_predictor.register_forward_hook(
                lambda m, i, o: captured.update(center4=o)
            )
        )
        hooks.append(
            model.ins_embed_head.offset_predictor.register_forward_hook(
                lambda m, i, o: captured.update(offset4=o)
            )
        )
        start = time.perf_counter()
        result = model([{"image": x, "height": h, "width": w}])[0]
        end = time.perf_counter()
        for hook in hooks:
            hook.remove()
    seconds = {"network": captured["t"] - start, "postprocessing": end - captured["t"]}
    panoptic = result["panoptic_seg"][0].numpy().astype(np.int32)
    if size == "tiny":  # stride 4, before detectron2's x4 bilinear resize (x4 offsets)
        keys = {"semantic": "sem4", "center": "center4", "offset": "offset4"}
    else:
        keys = {"semantic": "sem", "center": "center", "offset": "offset"}
    outputs = {k: captured[v][0].numpy() for k, v in keys.items()}
    return {**outputs, "panoptic": panoptic}, seconds


def generate(d2_root: str, key: str, size: str, out_dir: str, seed: int = 0) -> None:
    """Build, randomise, save and run one reference model into ``out_dir``."""
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    spec = MODELS[key]
    shape, crop = SIZES[size][spec["image"]]
    cfg = d2_config(d2_root, spec, size, crop)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    image, fed = load_image(spec["image"], shape)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    randomise(model, (x - model.pixel_mean) / model.pixel_std, torch.Generator().manual_seed(seed))
    os.makedirs(out_dir, exist_ok=True)
    state = zoo_state(model, spec.get("backbone_only", False))
    payload = {"model": state, "__author__": "tools/parity/detectron2_reference.py (random)"}
    if spec.get("backbone_only"):
        payload["matching_heuristics"] = True
    with open(os.path.join(out_dir, "model.pkl"), "wb") as f:
        pickle.dump(payload, f)
    outputs, seconds = run_reference(model, image, spec.get("backbone_only", False), size)
    if size == "tiny":
        outputs["image"] = np.asarray(
            Image.open(fed["file"]).convert("RGB").resize(fed["resize"][::-1], Image.BILINEAR)
        )
    np.savez_compressed(os.path.join(out_dir, "outputs.npz"), **outputs)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    pd = cfg.MODEL.PANOPTIC_DEEPLAB
    info = {
        "model": key,
        "size": size,
        "detectron2_config": spec["d2_config"],
        "zoo_file": spec["zoo_file"],
        "our_config": spec["ours"],
        "our_opts": our_opts(size, crop),
        "input": fed,
        "outputs_at": (
            "stride 4 (x4 bilinear, align_corners False, offsets x4)"
            if size == "tiny"
            else "input size"
        ),
        "postprocessing": {
            "thing_ids": sorted(meta.thing_dataset_id_to_contiguous_id.values()),
            "label_divisor": meta.label_divisor,
            "stuff_area": pd.STUFF_AREA,
            "threshold": pd.CENTER_THRESHOLD,
            "nms_kernel": pd.NMS_KERNEL,
            "top_k": pd.TOP_K_INSTANCE,
            "void_label": -1,
        },
        "parameters": sum(
            p.numel() for p in (model.backbone if spec.get("backbone_only") else model).parameters()
        ),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "seed": seed,
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"{key} ({size}): {info['parameters']:,} parameters, {seconds} -> {out_dir}")


def write_manifest(d2_root: str, key: str) -> None:
    """Names and shapes of the full-size checkpoint of ``key`` as the zoo file holds them."""
    from detectron2.modeling import build_model

    spec = MODELS[key]
    cfg = d2_config(d2_root, spec, "full", SIZES["full"][spec["image"]][1])
    state = zoo_state(build_model(cfg), spec.get("backbone_only", False))
    manifest = {
        "zoo_file": spec["zoo_file"],
        "detectron2_config": spec["d2_config"],
        "our_config": spec["ours"],
        "provenance": "state dict of detectron2's model built from detectron2_config (detectron2 "
        "c69939aa), as tools/parity/detectron2_reference.py --manifests writes it",
        "tensors": {k: list(v.shape) for k, v in state.items()},
    }
    path = os.path.join(FIXTURES, "manifests", f"{key}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(manifest, f, indent=0)
    print(f"{key}: {len(state)} tensors -> {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--detectron2", required=True, help="detectron2 checkout (for projects/Panoptic-DeepLab)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--models", nargs="*", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--out", default="", help="output folder (tiny: the test fixtures)")
    parser.add_argument("--manifests", action="store_true", help="write the name/shape manifests")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(args.detectron2, "projects", "Panoptic-DeepLab"))
    for key in args.models:
        if args.manifests:
            write_manifest(args.detectron2, key)
        else:
            out = args.out or (FIXTURES if args.size == "tiny" else "")
            if not out:
                parser.error("--out DIR is needed for full-size references")
            generate(args.detectron2, key, args.size, os.path.join(out, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
