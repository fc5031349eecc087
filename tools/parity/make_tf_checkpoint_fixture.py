"""Regenerate ``tests/fixtures/tf_checkpoint/`` (needs TensorFlow; CI never runs this).

    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tools/parity/make_tf_checkpoint_fixture.py

Writes three tiny checkpoints, each with an ``expected.npz`` holding every variable as
``tf.train.load_checkpoint`` reads it and an ``expected.json`` with TF's names, shapes and
dtypes:

* ``tf2/``: ``tf.train.Checkpoint`` of nested modules saved by ``CheckpointManager``
  (``ckpt-0``), deeplab2-style names such as
  ``encoder/_stage4/_block2/_attention/_height_axis/qkv_kernel/.ATTRIBUTES/VARIABLE_VALUE``,
  scalar to 4-D variables of many dtypes, an int64 step and a string variable; enough names
  for prefix-compressed keys across many restart points.
* ``v1/``: a graph-mode ``tf.compat.v1.train.Saver(sharded=True)`` checkpoint
  (``model.ckpt-7``) with variables on two (logical) CPUs, hence two data shards; its
  ``checkpoint`` state file names an absolute path from another machine.
* ``tf2_sliced/``: one variable that ``MaxShardSizePolicy`` splits into slices across shards
  (the reader reports these as unsupported), ``ckpt-1``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "tf_checkpoint")

DTYPES = ["float32", "float16", "float64", "bfloat16", "int8", "int16", "int32", "int64"]
DTYPES += ["uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128"]


def _value(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> tf.Tensor:
    if dtype == "bool":
        return tf.constant(rng.random(shape) > 0.5)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return tf.constant(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype))
    if dtype.startswith("complex"):
        return tf.cast(
            tf.complex(_value(rng, shape, "float64"), _value(rng, shape, "float64")), dtype
        )
    scale = 1e3 if dtype == "float64" else 1.0
    return tf.cast(tf.constant(rng.standard_normal(shape) * scale), dtype)


def _build() -> tf.train.Checkpoint:
    rng = np.random.default_rng(0)
    encoder = tf.Module()
    for stage in (1, 2, 3, 4):
        stage_mod = tf.Module()
        setattr(encoder, f"_stage{stage}", stage_mod)
        for block in (1, 2, 3):
            blk = tf.Module()
            setattr(stage_mod, f"_block{block}", blk)
            blk._attention = tf.Module()
            for axis in ("height", "width"):
                ax = tf.Module()
                setattr(blk._attention, f"_{axis}_axis", ax)
                ax.qkv_kernel = tf.Variable(_value(rng, (4, 6), "float32"))
                ax.query_rpe = tf.Variable(_value(rng, (3, 2), "float16"))
            blk._conv1 = tf.Module()
            blk._conv1.kernel = tf.Variable(_value(rng, (1, 1, 3, 2), "float32"))
            blk._bn1 = tf.Module()
            blk._bn1.gamma = tf.Variable(_value(rng, (2,), "float32"))
            blk._bn1.moving_variance = tf.Variable(_value(rng, (2,), "float64"))
    misc = tf.Module()
    for i, dtype in enumerate(DTYPES):
        setattr(misc, f"v_{dtype}", tf.Variable(_value(rng, (2, 3), dtype)))
        setattr(misc, f"scalar_{dtype}", tf.Variable(_value(rng, (), dtype)))
        setattr(misc, f"kernel4d_{i}", tf.Variable(_value(rng, (3, 3, 2, 2), dtype)))
    misc.empty = tf.Variable(tf.zeros((0, 3), tf.float32))
    misc.words = tf.Variable(tf.constant([b"axial", b"", b"deeplab\x00\xff"]))
    step = tf.Variable(tf.constant(12345678901, tf.int64))
    return tf.train.Checkpoint(encoder=encoder, misc=misc, global_step=step)


def _expected(prefix: str, folder: str) -> None:
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    arrays, meta = {}, {}
    for i, name in enumerate(sorted(shapes)):
        dtype = dtypes[name].name
        meta[name] = {"shape": list(shapes[name]), "dtype": dtype, "key": f"a{i}"}
        value = reader.get_tensor(name)
        if dtype == "string":
            if not name.startswith("_CHECKPOINTABLE"):  # the object graph is 16 KB
                meta[name]["value"] = [v.hex() for v in np.asarray(value, object).reshape(-1)]
            continue
        arrays[f"a{i}"] = np.asarray(value).astype(np.float32) if dtype == "bfloat16" else value
    np.savez_compressed(os.path.join(folder, "expected.npz"), **arrays)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()))
        f.write("\n}\n")


def _drop_timestamps(folder: str) -> None:
    """Keep the ``checkpoint`` state file byte-identical across regenerations."""
    path = os.path.join(folder, "checkpoint")
    with open(path) as f:
        lines = [line for line in f if "timestamp" not in line]
    with open(path, "w") as f:
        f.writelines(lines)


def main() -> None:
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    ckpt = _build()
    folder = os.path.join(OUT, "tf2")
    manager = tf.train.CheckpointManager(ckpt, folder, max_to_keep=1)
    _expected(manager.save(checkpoint_number=0), folder)
    _drop_timestamps(folder)

    folder = os.path.join(OUT, "tf2_sliced")
    small = tf.train.Checkpoint(weights=tf.Variable(tf.range(16, dtype=tf.float32)))
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=24)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    manager = tf.train.CheckpointManager(small, folder, max_to_keep=1)
    _expected(manager.save(checkpoint_number=1, options=options), folder)
    _drop_timestamps(folder)

    folder = os.path.join(OUT, "v1")
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(1)
        with tf.device("/cpu:0"), tf.compat.v1.variable_scope("backbone/stem"):
            tf.compat.v1.get_variable("weights", initializer=_value(rng, (3, 3, 3, 4), "float32"))
        with tf.device("/cpu:1"):
            with tf.compat.v1.variable_scope("backbone/stem"):
                tf.compat.v1.get_variable("biases", initializer=_value(rng, (4,), "float32"))
            gstep = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver(sharded=True)
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(gstep.assign(7))
            os.makedirs(folder)
            path = os.path.join(folder, "model.ckpt")
            prefix = saver.save(sess, path, global_step=7, write_meta_graph=False)
    _expected(prefix, folder)
    with open(os.path.join(folder, "checkpoint"), "w") as f:  # as if trained elsewhere
        f.write('model_checkpoint_path: "/train_dir/model.ckpt-7"\n')
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
