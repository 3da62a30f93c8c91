"""The reading experiment in PyTorch (tests/model/torch_ref.py's model, mstar's weights): after
vision pretraining, can the tiny decoder learn to name the digit on the object a question asks
about? Teacher-forced digit accuracy on the test questions, every 500 steps.

    TH=1 python benches/perception/torch_read.py VARIANT STEPS [LR] [STORE]

STORE: a run store of benches/perception/read.yaml with
`--set "stages.cells.query=SELECT images, synth_cell_classes(scene) AS region_labels FROM prompts"`
(its `vision` checkpoint and `reading` / `test_reading` / `prompts` / `test_prompts` tables).
VARIANT contains: `frozen` (the vision encoder is not trained), `curr` (the first CURR=800
steps show only the asked-for cell; the others get an empty cell's features), `canon` (a causal
depth-wise convolution of width 4 before each attention), `qfirst` (question before the image).
Measured 2026-11-25 (lr 1e-3, 1 thread): base, curr and canon stay at chance (digit NLL ≈ 2.3
= ln 10) for the 600–800 steps they ran; frozen, 3,000 steps: test digit accuracy 0.18 / 0.23 / 0.32 / 0.36 / 0.36 at steps
500–2,500 (train digit NLL 0.30) — the test ceiling is the encoder, pretrained on 2,000 images."""
import glob, io, json, math, sys, time
sys.path.insert(0, "/work/main/tests/model")
import numpy as np, torch, torch.nn.functional as F
import pyarrow.parquet as pq
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer
import torch_ref as R

torch.manual_seed(0)
import os; torch.set_num_threads(int(os.environ.get("TH", "1")))
variant, steps = sys.argv[1], int(sys.argv[2])
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
store = sys.argv[4] if len(sys.argv) > 4 else "/tmp/exp/cls"
ck = glob.glob(f"{store}/checkpoints/vision/iteration=0/*/")[0]
cfg = json.load(open(ck + "config.json"))
tok = Tokenizer.from_file(ck + "tokenizer.json")
weights = load_file(ck + "model.safetensors")

def patches(png):
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
    a = (a - 0.5) / 0.5
    return torch.from_numpy(a.reshape(7, 8, 7, 8, 3).transpose(0, 2, 1, 3, 4).reshape(49, 192).copy())

scenes = {}
for t in ("prompts", "test_prompts"):
    for r in pq.read_table(glob.glob(f"{store}/tables/{t}/iteration=0/*.parquet")[0], columns=["prompt_id", "scene"]).to_pylist():
        scenes[r["prompt_id"]] = json.loads(r["scene"])

def cells_of(pid):
    base, what = pid.rsplit("-", 1)
    sc = scenes[base]
    occ = {o["row"] * 3 + o["col"] for o in sc["objects"]}
    tgt = next(o["row"] * 3 + o["col"] for o in sc["objects"] if f'{o["colour"]} {o["shape"]}' == what)
    return tgt, min(set(range(9)) - occ)

def load(t):
    rows = pq.read_table(glob.glob(f"{store}/tables/{t}/iteration=0/*.parquet")[0]).to_pylist()
    out = []
    for r in rows:
        q = tok.encode(r["question"] + "\n", add_special_tokens=False).ids
        resp = tok.encode(r["response"], add_special_tokens=False).ids + [2]
        # the digit: the first token that decodes to one digit
        dpos = next(i for i, t in enumerate(resp) if tok.decode([t]).strip().isdigit())
        out.append((q, resp, dpos, patches(r["images"][0]["bytes"]), cells_of(r["prompt_id"])))
    return out


# region pool 3x3 over 7x7 patches (patch centre)
reg = lambda c: min((c * 8 + 4) * 3 // 56, 2)
pool = torch.zeros(9, 49)
for i in range(49):
    pool[reg(i // 7) * 3 + reg(i % 7), i] = 1
pool = pool / pool.sum(1, keepdim=True)

class M(R.TinyVlm):
    def __init__(self, cfg, w, variant):
        super().__init__(cfg, w)
        self.variant = variant
        L, d = cfg["num_hidden_layers"], cfg["hidden_size"]
        if "canon" in variant:
            self.conv = torch.nn.Parameter(torch.randn(L, 4, d) * 0.1)

    def vision(self, p):
        c = self.cfg["vision_config"]; eps = self.cfg["rms_norm_eps"]
        x = self.lin(p, "vision.patch_embed") + self.w("vision.pos_embed")
        b, t, d = x.shape; heads = c["num_attention_heads"]
        for i in range(c["num_hidden_layers"]):
            pre = f"vision.layers.{i}"
            h = R.rms(x, self.w(pre + ".norm1.weight"), eps)
            qkv = self.lin(h, pre + ".attn.qkv").reshape(b, t, 3, heads, d // heads)
            q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
            x = x + self.lin(R.attention(q, k, v).transpose(1, 2).reshape(b, t, d), pre + ".attn.proj")
            h = R.rms(x, self.w(pre + ".norm2.weight"), eps)
            x = x + self.lin(F.silu(self.lin(h, pre + ".mlp.fc1")), pre + ".mlp.fc2")
        v = R.rms(x, self.w("vision.norm.weight"), eps)
        v = pool @ v
        return self.lin(F.silu(self.lin(v, "projector.fc1")), "projector.fc2")

    def layer(self, x, i, positions, mask, cache=None):
        cfg = self.cfg; eps = cfg["rms_norm_eps"]
        b, t, d = x.shape; heads = cfg["num_attention_heads"]; hd = d // heads
        pre = f"model.layers.{i}"
        h = R.rms(x, self.w(pre + ".input_layernorm.weight"), eps)
        if "canon" in self.variant:
            w = self.conv[i]
            hp = F.pad(h, (0, 0, 3, 0))
            h = h + sum(w[j] * hp[:, 3 - j:3 - j + t] for j in range(4))
        split = lambda y: y.reshape(b, t, heads, hd).transpose(1, 2)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        rope = lambda y: y * cos + R.rotate_half(y) * sin
        q = rope(split(self.lin(h, pre + ".self_attn.q_proj", False)))
        k = rope(split(self.lin(h, pre + ".self_attn.k_proj", False)))
        v = split(self.lin(h, pre + ".self_attn.v_proj", False))
        a = R.attention(q, k, v, mask).transpose(1, 2).reshape(b, t, d)
        x = x + self.lin(a, pre + ".self_attn.o_proj", False)
        h = R.rms(x, self.w(pre + ".post_attention_layernorm.weight"), eps)
        g = self.lin(h, pre + ".mlp.gate_proj", False); u = self.lin(h, pre + ".mlp.up_proj", False)
        return x + self.lin(F.silu(g) * u, pre + ".mlp.down_proj", False)

def batch(rows):
    """Right-padded [bos, image tokens, question] + response; returns ids-embeds, targets, weights, digit positions."""
    qfirst = "qfirst" in variant
    seqs, tgts, wts, dps = [], [], [], []
    for q, resp, dpos, *_ in rows:
        if qfirst:
            pre = [1] + q + [3]
        else:
            pre = [1, 3] + q
        seqs.append(pre + resp)
    T = max(len(s) for s in seqs) + 8
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    img_at = []
    for b, (s, (q, resp, dpos, *_)) in enumerate(zip(seqs, rows)):
        ids[b, : len(s)] = torch.tensor(s)
        img_at.append(s.index(3))
    return seqs, ids, img_at

MASK = [False]
def run(model, rows):
    seqs, ids, img_at = batch(rows)
    feats = model.vision(torch.stack([r[3] for r in rows]))  # B, 9, d
    if MASK[0]:
        keep = torch.zeros(len(rows), 9, 1)
        emp = torch.stack([feats[b, r[4][1]] for b, r in enumerate(rows)])[:, None]
        for b, r in enumerate(rows):
            keep[b, r[4][0]] = 1
        feats = feats * keep + emp * (1 - keep)
    e = F.embedding(ids, model.w("model.embed_tokens.weight"))
    B, T, d = e.shape
    x = torch.cat([torch.cat([e[b, : img_at[b]], feats[b], e[b, img_at[b] + 1 :]], 0)[None] for b in range(B)], 0)
    t = x.shape[1]
    positions = torch.arange(t)[None].expand(B, t)
    mask = torch.triu(torch.full((t, t), -1e9), diagonal=1)[None, None]
    logits = model.logits(model.decode(x, positions, mask))
    targets = torch.zeros(B, t, dtype=torch.long); weights = torch.zeros(B, t); dig = []
    for b, (s, (q, resp, dpos, *_)) in enumerate(zip(seqs, rows)):
        start = len(s) - len(resp) + 8  # index in x of the first response token (9 image tokens replace 1)
        for j, r in enumerate(resp):
            targets[b, start + j - 1] = r; weights[b, start + j - 1] = 1
        dig.append((b, start + dpos - 1, resp[dpos]))
    return logits, targets, weights, dig

if __name__ != "__main__":
    raise ImportError("stop")
train, test = load("reading"), load("test_reading")
print(len(train), len(test), flush=True)
model = M(cfg, weights, variant)
params = [p for n, p in model.named_parameters() if not ("frozen" in variant and n.startswith("p.vision"))]
print("trainable", sum(p.numel() for p in params), flush=True)
opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
sched = lambda s: lr * min(1, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
rng = np.random.default_rng(0)
CURR = int(os.environ.get("CURR", "800"))

def evaluate():
    model.eval(); ok = 0
    with torch.no_grad():
        for i in range(0, len(test), 64):
            rows = test[i : i + 64]
            logits, _, _, dig = run(model, rows)
            ok += sum(int(logits[b, p].argmax()) == d for b, p, d in dig)
    model.train(); return ok / len(test)

def evaluate_masked():
    MASK[0] = True
    try:
        return evaluate()
    finally:
        MASK[0] = False

t0 = time.time(); order = []
for s in range(steps):
    if not order:
        order = list(rng.permutation(len(train)))
    idx = [order.pop() for _ in range(min(32, len(order)))]
    for g in opt.param_groups: g["lr"] = sched(s)
    MASK[0] = "curr" in variant and s < CURR
    logits, targets, weights_, dig = run(model, [train[i] for i in idx])
    loss = R.masked_ce(logits, targets, weights_)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    if s % 100 == 0 or s == steps - 1:
        dl = -torch.log_softmax(logits, -1)[[b for b, _, _ in dig], [p for _, p, _ in dig], [d for _, _, d in dig]].mean()
        msg = f"{variant} step {s} loss {loss.item():.3f} digit_nll {dl.item():.3f} t {time.time()-t0:.0f}s"
        if s % 500 == 0 or s == steps - 1:
            msg += f" test_digit_acc {evaluate():.3f} masked {evaluate_masked():.3f}"
        print(msg, flush=True)
