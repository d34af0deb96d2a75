"""Check an SAE folder steerguard saved against SAELens's layout, with NumPy as the reference.

    /work/pyref/bin/python scripts/reference/check_sae_layout.py SAE_DIR IO_FILE [--write]

SAE_DIR holds cfg.json and sae_weights.safetensors. The script checks the cfg fields SAELens
reads (d_in, d_sae, architecture, dtype, k for topk, hook_name, ...), the tensor names, shapes
and dtypes (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold
[d_sae] for jumprelu, all float32), then runs its own NumPy forward on IO_FILE's `x` [rows, d_in]:

    topk:     z = (x - b_dec) @ W_enc + b_enc; keep the k largest of each row, ReLU; 0 elsewhere
    jumprelu: z as above (b_dec subtracted only if apply_b_dec_to_input); f = z * (z > threshold)
    x_hat = f @ W_dec + b_dec

and compares it with IO_FILE's `x_hat` (steerguard's output) when present. With --write it stores
its own result as `x_hat_numpy` in IO_FILE (how test/fixtures/sae/*-io.safetensors were made).
Prints "ok" and exits 0, or names the first problem and exits 1.
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def fail(msg: str) -> None:
    print(f"FAIL: {msg}")
    sys.exit(1)


def numpy_forward(cfg: dict, w: dict, x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    w_enc = w["W_enc"].astype(np.float64)
    b_enc = w["b_enc"].astype(np.float64)
    w_dec = w["W_dec"].astype(np.float64)
    b_dec = w["b_dec"].astype(np.float64)
    sae_in = x64 - b_dec if cfg.get("apply_b_dec_to_input", True) else x64
    z = sae_in @ w_enc + b_enc
    if cfg["architecture"] == "topk":
        k = cfg["k"]
        f = np.zeros_like(z)
        top = np.argpartition(-z, k - 1, axis=1)[:, :k]
        rows = np.arange(z.shape[0])[:, None]
        f[rows, top] = np.maximum(z[rows, top], 0)
    else:
        f = z * (z > w["threshold"].astype(np.float64))
    return f @ w_dec + b_dec


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    write = "--write" in sys.argv[1:]
    if len(args) != 2:
        fail("usage: check_sae_layout.py SAE_DIR IO_FILE [--write]")
    sae_dir, io_file = Path(args[0]), Path(args[1])
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "dtype", "hook_name", "hook_layer", "apply_b_dec_to_input"):
        if key not in cfg:
            fail(f"cfg.json has no {key}")
    arch = cfg["architecture"]
    if arch not in ("topk", "jumprelu"):
        fail(f"architecture {arch!r}")
    if arch == "topk" and (cfg.get("k") is None or cfg.get("activation_fn_kwargs", {}).get("k") != cfg["k"]):
        fail("topk cfg needs k and activation_fn_kwargs.k, equal")
    if cfg["dtype"] != "float32":
        fail(f"dtype {cfg['dtype']!r}")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    weights = load_file(str(sae_dir / "sae_weights.safetensors"))
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if set(weights) != set(shapes):
        fail(f"tensors {sorted(weights)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        if weights[name].shape != shape:
            fail(f"{name} shape {weights[name].shape}, expected {shape}")
        if weights[name].dtype != np.float32:
            fail(f"{name} dtype {weights[name].dtype}")
    if arch == "topk":
        norms = np.linalg.norm(weights["W_dec"], axis=1)
        print(f"decoder row norms: min {norms.min():.6f} max {norms.max():.6f}")

    io = load_file(str(io_file))
    x = io["x"]
    if x.ndim != 2 or x.shape[1] != d_in:
        fail(f"x shape {x.shape}, expected [rows, {d_in}]")
    ref = numpy_forward(cfg, weights, x)
    if "x_hat" in io:
        diff = np.abs(io["x_hat"].astype(np.float64) - ref).max()
        print(f"max |steerguard x_hat - numpy x_hat| = {diff:.3g}")
        if not diff < 1e-4:
            fail("steerguard's forward differs from NumPy's")
    if write:
        io["x_hat_numpy"] = ref.astype(np.float32)
        save_file(io, str(io_file))
        print(f"wrote x_hat_numpy to {io_file}")
    print("ok")


if __name__ == "__main__":
    main()
