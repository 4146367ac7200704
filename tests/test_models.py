"""The networks: shape planning and refusals, layer shapes, normalization, attention, sizes."""

import json
import math

import pytest
import torch

from b2b.config import load_config
from b2b.errors import ConfigError, ShapeError
from b2b.model.critic import Critic
from b2b.model.generator import Generator
from b2b.model.layers import SelfAttention
from b2b.model.networks import build_models
from b2b.model.shape import MAX_INITIAL, check_shape, layer_plan

DEMO = (4, 64, 48)
LPD5 = (5, 192, 84)
LPD17 = (17, 192, 84)


def _producible(size: int) -> bool:
    """Independent statement of the rule: size = d0 × 2^a × 3^b, d0 <= 16, in at most five strides from
    {1, 2, 3, 4} (each 3 takes a stride, 2s pair up into 4s)."""
    for d0 in range(1, MAX_INITIAL + 1):
        if size % d0:
            continue
        rest, a, b = size // d0, 0, 0
        while rest % 2 == 0:
            rest, a = rest // 2, a + 1
        while rest % 3 == 0:
            rest, b = rest // 3, b + 1
        if rest == 1 and b + math.ceil(a / 2) <= 5:
            return True
    return False


def test_plan_of_the_known_shapes():
    demo = layer_plan(DEMO)
    assert demo.initial == (2, 1)
    assert demo.generator_grids() == [(2, 1), (4, 2), (8, 4), (16, 8), (32, 16), (64, 48)]
    assert demo.critic_grids() == [(32, 16), (16, 8), (8, 4), (4, 2), (2, 1)]
    lpd = layer_plan(LPD17)
    assert lpd.initial == (6, 7)  # 192 = 6 × 2^5 (only stride 2); 84 = 7 × 1 × 1 × 2 × 2 × 3
    assert lpd.time.strides == (2, 2, 2, 2, 2)
    assert lpd.pitch.strides == (1, 1, 2, 2, 3)
    assert lpd.generator_grids()[-1] == (192, 84)


def test_every_size_up_to_600_is_planned_or_refused_as_the_rule_says():
    for size in range(1, 601):
        if _producible(size):
            plan = layer_plan((1, size, 12))
            assert plan.time.sizes()[-1] == size and plan.time.initial <= MAX_INITIAL
            assert all(s in (1, 2, 3, 4) for s in plan.time.strides)
        else:
            with pytest.raises(ShapeError, match=f"time size {size};"):
                check_shape((1, size, 12))


@pytest.mark.parametrize("shape", [DEMO, LPD5, LPD17, (1, 16, 12), (3, 96, 72), (2, 7, 5), (4, 99, 104)])
def test_networks_produce_and_take_the_shape(shape):
    torch.manual_seed(0)
    g = Generator(shape, latent_dim=8, width=2)
    d = Critic(shape, width=2)
    with torch.no_grad():
        x = g(torch.randn(3, 8))
    assert x.shape == (3, *shape)
    assert float(x.min()) > 0 and float(x.max()) < 1  # sigmoid
    assert d(x).shape == (3,)


def test_refusal_names_axis_size_rule_and_nearest_sizes():
    with pytest.raises(ShapeError) as info:
        check_shape((4, 64, 100))
    msg = str(info.value)
    assert "pitch size 100" in msg and "d0 <= 16" in msg and "{1, 2, 3, 4}" in msg
    assert "Nearest producible pitch sizes: 99 and 104" in msg  # 101, 103 prime; 102 = 6 × 17
    with pytest.raises(ShapeError, match=r"time size 34;.*sizes: 33 and 36"):
        check_shape((4, 34, 48))
    with pytest.raises(ShapeError, match="positive sizes"):
        check_shape((4, 0, 48))


def test_config_validation_refuses_a_shape_before_any_convolution(tmp_path):
    from b2b.training.preflight import validate_for_training

    (tmp_path / "manifest.json").write_text(json.dumps({"shape": [4, 64, 100], "shards": []}))
    cfg = load_config(None, [f"data.shards={tmp_path}"])
    with pytest.raises(ShapeError, match="pitch size 100"):
        validate_for_training(cfg)


def test_sync_batchnorm_with_the_penalty_is_refused():
    with pytest.raises(ConfigError, match="no double backward"):
        load_config(None, ["model.sync_batchnorm=true", "model.critic_norm=batch"])
    # Without the penalty (or with a per-sample norm) the combination is allowed.
    load_config(None, ["model.sync_batchnorm=true", "model.critic_norm=batch", "loss.gp_lambda=0"])
    load_config(None, ["model.sync_batchnorm=true", "model.critic_norm=layer"])


def test_build_models_uses_the_config():
    cfg = load_config(None, ["model.latent_dim=7", "model.g_width=3", "model.d_width=5", "model.dropout=0.1"])
    g, d = build_models(cfg, DEMO, 4)
    assert g.latent_dim == 7 and g.shape == DEMO and d.shape == DEMO
    assert g.net[0][0].in_channels == 7 and g.net[0][0].out_channels == 8 * 3
    assert d.body[0][0].out_channels == 5 and d.dropout.p == 0.1
    assert g.gate_segments == 4 and g.gate.weight.shape == (4 * 4, 7)  # model.bar_gate: 4 tracks × 4 bars
    assert build_models(load_config(None, ["model.bar_gate=false"]), DEMO, 4)[0].gate is None
    # Default critic_norm = layer, after every convolution but the first (model.critic_norm_first=false).
    assert isinstance(d.body[0][1], torch.nn.Identity) and d.body[0][0].bias is not None
    assert isinstance(d.body[1][1], torch.nn.GroupNorm)
    with pytest.raises(ShapeError):
        build_models(cfg, (4, 64, 100), 4)


def test_layer_norm_scores_each_sample_alone_batch_norm_does_not():
    # Why batch norm conflicts with the per-sample penalty: in training mode a sample's score (and
    # so its gradient) depends on the other samples of the batch.
    torch.manual_seed(0)
    x = torch.rand(4, *DEMO)
    y = x.clone()
    y[1:] = torch.rand(3, *DEMO)
    for norm, independent in (("layer", True), ("none", True), ("batch", False)):
        d = Critic(DEMO, width=4, norm=norm, dropout=0.0).train()
        same = torch.allclose(d(x)[0], d(y)[0], rtol=1e-5, atol=1e-6)
        assert same == independent, norm


def test_self_attention_matches_a_hand_written_one():
    torch.manual_seed(0)
    att = SelfAttention(16)
    x = torch.randn(2, 16, 3, 5)
    assert att.gamma.item() == 0.0 and torch.equal(att(x), x)  # identity at initialization
    with torch.no_grad():
        att.gamma.fill_(0.7)
    with torch.no_grad():
        q, k, v = att.query(x), att.key(x), att.value(x)  # (N, 2, 3, 5), (N, 2, 3, 5), (N, 16, 3, 5)
        expected = torch.empty_like(x)
        for n in range(2):
            for i in range(15):
                qi = q[n].flatten(1)[:, i]
                logits = [qi @ k[n].flatten(1)[:, j] / math.sqrt(2) for j in range(15)]  # 16 // 8 = 2 dims
                weights = torch.softmax(torch.stack(logits), 0)
                expected[n].view(16, 15)[:, i] = x[n].view(16, 15)[:, i] + 0.7 * (v[n].flatten(1) @ weights)
        torch.testing.assert_close(att(x), expected, rtol=1e-5, atol=1e-5)


def test_gamma_starts_at_zero_and_moves_in_training():
    from b2b.training.losses import critic_loss, generator_loss

    torch.manual_seed(0)
    g, d = Generator(DEMO, 8, 2), Critic(DEMO, 2)
    gammas = [m.gamma for m in (*g.modules(), *d.modules()) if isinstance(m, SelfAttention)]
    assert len(gammas) == 2 and all(p.item() == 0.0 for p in gammas)
    opt_g = torch.optim.Adam(g.parameters(), 1e-3)
    opt_d = torch.optim.Adam(d.parameters(), 1e-3)
    real = (torch.rand(4, *DEMO) > 0.9).float()
    critic_loss(d, real, g(torch.randn(4, 8)), gp_lambda=10).total.backward()
    opt_d.step()
    opt_g.zero_grad()
    generator_loss(d, g(torch.randn(4, 8))).backward()
    opt_g.step()
    assert all(p.item() != 0.0 for p in gammas)


def test_parameter_counts_demo_and_wide():
    g, d = Generator(DEMO, 128, 32), Critic(DEMO, 32)  # the default config on the demo corpus
    n_g = sum(p.numel() for p in g.parameters())
    n_d = sum(p.numel() for p in d.parameters())
    assert 0.8e6 < n_g < 1.3e6 and 0.8e6 < n_d < 1.3e6
    with torch.device("meta"):  # count without allocating
        g, d = Generator(LPD17, 512, 512), Critic(LPD17, 512)
    assert sum(p.numel() for p in g.parameters()) > 2e8 and sum(p.numel() for p in d.parameters()) > 1.5e8


def test_full_precision_survives_an_autocast_wrapped_forward():
    # accelerate's prepare() wraps forward in autocast; the critic's inner disable must still win.
    d = Critic(DEMO, 4, dropout=0.0)
    d.forward = torch.autocast("cpu", dtype=torch.bfloat16)(d.forward)
    x = torch.rand(2, *DEMO)
    assert d(x).dtype == torch.bfloat16
    assert d(x, full_precision=True).dtype == torch.float32


def test_same_seed_same_networks_bit_for_bit():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        g, d = Generator(DEMO, 8, 2), Critic(DEMO, 2)
        x = g(torch.randn(2, 8))
        outs.append((x, d(x)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


# ---------------------------------------------------------------------------------------------------
# b2b describe


def test_describe_counts_parameters_and_flops(capsys):
    from b2b.training.describe import describe

    cfg = load_config(None, ["data.shape=[4,64,48]"])
    report = describe(cfg, [4, 64, 48], n_bars=4)
    g, d = build_models(cfg, DEMO, 4)  # real (CPU) networks: the report's meta-device counts must match
    # 1,025,397 in the convolutions and attention, plus the pitch bias (4 tracks × 48 pitches) and the bar
    # gate (latent 128 → 4 tracks × 4 bars, and its bias).
    expected = 1_025_397 + 4 * 48 + 128 * 16 + 16
    assert report["generator"]["params"] == sum(p.numel() for p in g.parameters()) == expected
    assert report["critic"]["params"] == sum(p.numel() for p in d.parameters())
    for net in ("generator", "critic"):
        rows = report[net]["layers"]
        assert sum(r["params"] for r in rows) == report[net]["params"]
        assert sum(r["flops"] for r in rows) == report[net]["forward_flops"]
    g_rows = {r["name"]: r for r in report["generator"]["layers"]}
    d_rows = {r["name"]: r for r in report["critic"]["layers"]}
    # Hand-computed FLOPs (2 per multiply-add). Generator layer 1: 128 → 256 channels, kernel 2×1 on a 1×1
    # input. Critic conv 1: 4 → 32 channels, kernel 4×5, output 32×16. Head: 512 → 1.
    assert g_rows["net.0"]["flops"] == 2 * 128 * 256 * 2 * 1 and g_rows["net.0"]["output"] == [256, 2, 1]
    assert d_rows["body.0"]["flops"] == 2 * 32 * (32 * 16) * 4 * 4 * 5
    assert d_rows["head"]["flops"] == 2 * 512 and d_rows["head"]["output"] == [1]
    assert g_rows["net.6"]["output"] == [4, 64, 48]
    assert g_rows["gate"]["flops"] == 2 * 128 * 16 and g_rows["gate"]["output"] == [16]
    steps = report["steps"]
    # A critic step without the penalty is forward + backward on real and fake: between 2 × 2 and 2 × 3
    # forward passes (the first convolution needs no input gradient).
    assert 4 * report["critic"]["forward_flops"] < steps["critic_step_flops_without_penalty"]
    assert steps["critic_step_flops_without_penalty"] < 6 * report["critic"]["forward_flops"]
    assert 0.5 < steps["penalty_extra"] < 1.5
    g_forward = report["generator"]["forward_flops"]
    expected = 5 * (g_forward + steps["critic_step_flops"]) + steps["generator_step_flops"]  # n_critic = 5
    assert steps["train_step_flops"] == expected
    # Memory: float32 weights, gradients and Adam's two moments of both networks, and the EMA copy.
    n_g, n_d = report["generator"]["params"], report["critic"]["params"]
    assert report["memory"]["state_bytes"] == 4 * (4 * n_g + 4 * n_d + n_g)
    assert report["memory"]["total_bytes"] > report["memory"]["state_bytes"]


def test_describe_cli_json_text_and_errors(tmp_path, capsys):
    from b2b.cli.main import main
    from b2b.training.describe import describe

    (tmp_path / "manifest.json").write_text(json.dumps({"shape": [5, 96, 84], "shards": []}))
    assert main(["describe", f"data.shards={tmp_path}", "model.g_width=4", "model.d_width=4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape"] == [5, 96, 84]  # taken from the manifest
    cfg = load_config(None, [f"data.shards={tmp_path}", "model.g_width=4", "model.d_width=4"])
    assert report == json.loads(json.dumps(describe(cfg, [5, 96, 84], n_bars=1)))  # no spec: 1 bar

    config = tmp_path / "demo.yaml"
    config.write_text("data:\n  shards: nowhere\n  shape: [4, 64, 48]\n")
    assert main(["describe", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    # 1,026,105: the bar gate in one segment (no shards, so no bars known)
    assert "generator: 1,026,105 parameters" in text and "sample shape: [4, 64, 48]" in text
    assert "FLOPs per training step and rank (× data.batch_size × train.grad_accum = 16)" in text
    assert "expected memory per rank:" in text

    assert main(["describe", "data.shards=nowhere"]) == 2
    assert "data.shape is not set" in capsys.readouterr().err
    assert main(["describe", "data.shards=nowhere", "data.shape=[4,64,100]"]) == 2
    assert "pitch size 100" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Generator outputs, density initialisation, minibatch standard deviation


def test_straight_through_outputs_are_binary_forward_and_identity_backward():
    from b2b.model.generator import binarize, straight_through

    probs = torch.tensor([0.2, 0.5, 0.7, 0.95], requires_grad=True)
    hard = straight_through(probs, "binary_det", threshold=0.6)
    assert hard.tolist() == [0.0, 0.0, 1.0, 1.0]  # forward: p >= threshold
    (hard * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert probs.grad.tolist() == [1.0, 2.0, 3.0, 4.0]  # backward: as if the output were p itself
    # Bernoulli: a cell is on with its probability (10,000 draws of p = 0.3 on a seeded stream).
    draws = binarize(torch.full((10_000,), 0.3), "binary_stoch", generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {0.0, 1.0} and abs(draws.mean().item() - 0.3) < 0.015
    with pytest.raises(ValueError, match="not one of sigmoid, binary_det, binary_stoch"):
        binarize(probs, "tanh")


@pytest.mark.parametrize("output", ["sigmoid", "binary_det", "binary_stoch"])
def test_the_critic_sees_what_the_output_makes(output):
    torch.manual_seed(0)
    g = Generator(DEMO, latent_dim=8, width=2, output=output, threshold=0.5)
    z = torch.randn(3, 8)
    x = g(z)
    probs = g.probabilities(z)
    if output == "sigmoid":
        assert torch.equal(x, probs)
    else:
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        if output == "binary_det":
            assert torch.equal(x, (probs >= 0.5).float())
    # The generator learns through the binary output: every parameter gets a gradient (but attention's
    # query, key and value, whose effect is gamma × attention = 0 at initialization).
    Critic(DEMO, width=2)(x).sum().backward()
    for name, p in g.named_parameters():
        in_attention = any(part in name for part in (".query.", ".key.", ".value."))
        assert p.grad is not None and bool(p.grad.abs().sum() > 0) != in_attention, name


def test_output_bias_starts_each_track_at_its_density():
    import numpy as np

    density = np.zeros((4, 48))
    density[0, :] = 0.02  # per track means: 0.02, 0.5, 0 (silent), 1 (always on)
    density[1, :24] = 1.0
    density[3, :] = 1.0
    g = Generator(DEMO, latent_dim=8, width=2)  # sigmoid output, no pitch bias: logit of each track's mean
    g.init_output_bias(density)
    floor = 1e-6
    expected = [math.log(0.02 / 0.98), 0.0, math.log(floor / (1 - floor)), math.log((1 - floor) / floor)]
    assert g.net[-1][0].bias.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"density has shape \(3, 48\), the generator's output \(4, 48\)"):
        g.init_output_bias(density[:3])


def test_calibrated_pitch_bias_starts_every_cell_at_its_share_of_notes():
    import numpy as np

    from b2b.model.generator import SILENT_MARGIN

    density = np.zeros((4, 48))
    density[0, 20:30] = 0.02  # a voice's range
    density[1, 10:20] = 0.1
    density[3, 5] = 0.5
    torch.manual_seed(0)
    g = Generator(DEMO, latent_dim=8, width=4, output="binary_det", threshold=0.5, pitch_bias=True)
    state = {k: v.clone() for k, v in g.state_dict().items()}
    g.init_output_bias(density)
    # Only the output bias changed (the calibration ran on a copy: BatchNorm statistics untouched).
    changed = [k for k, v in g.state_dict().items() if not torch.equal(v, state[k])]
    assert changed == ["pitch_bias", "net.6.0.bias"] or sorted(changed) == ["net.6.0.bias", "pitch_bias"]
    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))  # the calibration's latents
    with torch.no_grad():
        share = g.train()(z).mean(dim=(0, 2)).numpy()  # (tracks, pitch): share of notes per cell
        logits = g.logits(z)
    assert share[0, 20:30] == pytest.approx(np.full(10, 0.02), abs=0.002)
    assert share[1, 10:20] == pytest.approx(np.full(10, 0.1), abs=0.005)
    assert share[3, 5] == pytest.approx(0.5, abs=0.01)
    # Where the data has no note, no logit comes within SILENT_MARGIN of the threshold.
    silent = torch.from_numpy(density == 0)[None, :, None, :].expand_as(logits)
    assert logits[silent].max().item() <= -SILENT_MARGIN + 1e-4


def test_bar_gate_opens_each_track_in_its_share_of_bars_and_silences_closed_bars():
    import numpy as np

    density = np.zeros((4, 48))
    density[0, 20:30] = 0.02  # plays in half the bars: 0.04 of the steps while it plays
    density[1, 10:20] = 0.1  # plays in every bar
    activity = np.array([0.5, 1.0, 0.0, 0.25])
    density[3, 5] = 0.1  # plays in a quarter of the bars, then every step at pitch 5 is 0.4 likely
    torch.manual_seed(0)
    g = Generator(DEMO, latent_dim=8, width=4, output="binary_det", pitch_bias=True, gate_segments=4)
    g.init_output_bias(density, activity=activity)
    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))  # the calibration's latents
    with torch.no_grad():
        notes = g.train()(z)
        gate = (g.gate_probabilities(z) >= 0.5).double()[..., 0, 0]  # (n, tracks, bars)
    assert gate.mean(dim=(0, 2)).tolist() == pytest.approx([0.5, 1.0, 0.0, 0.25], abs=0.01)
    # A closed gate silences its track's whole bar; an open one lets the notes through.
    bars = notes.view(256, 4, 4, 16, 48)
    assert bars.amax(dim=(3, 4))[gate == 0].max().item() == 0.0
    # The notes start at the density within the open bars, so the overall density is the data's.
    share = notes.mean(dim=(0, 2)).numpy()
    assert share[0, 20:30].mean() == pytest.approx(0.02, abs=0.004)
    assert share[1, 10:20].mean() == pytest.approx(0.1, abs=0.01)
    assert share[3, 5] == pytest.approx(0.1, abs=0.02)
    assert share[2].max() == 0.0
    # Straight through: the gate's parameters get the gradient of what the critic sees.
    g.zero_grad()
    g(z[:8]).sum().backward()
    assert g.gate.weight.grad.abs().sum() > 0
    with torch.no_grad():  # sampling makes the same notes the critic saw
        assert torch.equal((g.probabilities(z[:8]) >= 0.5).float(), g(z[:8]))
    with pytest.raises(ValueError, match="64 time steps do not split into 3 gate segments"):
        Generator(DEMO, latent_dim=8, width=4, gate_segments=3)
    with pytest.raises(ValueError, match=r"activity has shape \(1,\), the generator's tracks \(4,\)"):
        g.init_output_bias(density, activity=activity[:1])


def test_bar_gates_start_open_and_soft_gates_calibrate_their_mean():
    import numpy as np

    torch.manual_seed(0)
    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))  # the calibration's latents
    # Without calibration (model.density_init=false) every gate starts open: no bar is silenced.
    g = Generator(DEMO, latent_dim=8, width=4, output="binary_det", pitch_bias=True, gate_segments=4)
    with torch.no_grad():
        assert g.gate_probabilities(z).min().item() > 0.99  # logits 12 ± a unit spread
    # Stochastic gates are Bernoulli draws: their mean probability is the share of bars.
    density = np.full((4, 48), 0.01)
    activity = np.array([0.1, 0.5, 0.9, 0.0])
    g = Generator(DEMO, latent_dim=8, width=4, output="binary_stoch", pitch_bias=True, gate_segments=4)
    g.init_output_bias(density, activity=activity)
    with torch.no_grad():
        mean = g.gate_probabilities(z).mean(dim=(0, 2)).flatten().tolist()
    assert mean[:3] == pytest.approx([0.1, 0.5, 0.9], abs=1e-6) and mean[3] < 1e-5
    # Sampling silences whole bars as training does: notes drawn from probabilities() leave the same share
    # of bars silent as the critic's input (one gate draw per track and bar, not one per cell).
    from b2b.model.generator import binarize

    g.eval()
    with torch.no_grad():
        trained = g(z)
        draws = torch.Generator().manual_seed(1)
        sampled = binarize(g.probabilities(z, draws), "binary_stoch", generator=draws)
    for notes in (trained, sampled):
        plays = notes.view(256, 4, 4, 16, 48).amax(dim=(3, 4)).mean(dim=(0, 2)).tolist()
        assert plays == pytest.approx([0.1, 0.5, 0.9, 0.0], abs=0.05)


def test_bar_gate_has_unit_spread_and_learns_slowly():
    from b2b.model.generator import GATE_LR_MULT, BarGate

    assert GATE_LR_MULT == 0.1
    torch.manual_seed(0)
    gate = BarGate(64, 200)
    z = torch.randn(512, 64)
    with torch.no_grad():
        assert gate(z).std().item() == pytest.approx(1.0, abs=0.05)  # logits of unit spread
        gate.set_bias(torch.full((200,), 2.5))
        assert gate(torch.zeros(1, 64)).flatten().tolist() == pytest.approx([2.5] * 200)
    # Adam's first step moves every stored parameter by lr: the gate's effective bias by a tenth of it,
    # each effective weight by lr * 0.1 / sqrt(64).
    weights = (gate.weight * gate.weight_gain).detach().clone()
    opt = torch.optim.Adam(gate.parameters(), lr=1e-3)
    gate(z[:5]).sum().backward()
    opt.step()
    with torch.no_grad():
        assert gate(torch.zeros(1, 64)).flatten().tolist() == pytest.approx([2.5 - 1e-4] * 200, abs=1e-6)
        moved = (gate.weight * gate.weight_gain - weights).abs()
        assert moved.max().item() == pytest.approx(1e-4 / 8, rel=1e-2)  # float32 rounding of the stored
    # In float32 under autocast: a gate is a whole bar.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gate(z[:5]).dtype == torch.float32


def test_minibatch_std_by_hand_and_groups():
    from b2b.model.layers import MinibatchStd

    x = torch.zeros(4, 2, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([1.0, 10.0, 3.0, 10.0])  # group = samples (0, 2) and (1, 3)
    out = MinibatchStd(group=2)(x)
    assert out.shape == (4, 3, 1, 1)
    # Group (0, 2): std of channel 0 is 1 and of channel 1 is 0 (plus 1e-8 under the root): mean 0.5.
    # Group (1, 3): identical samples: std ~ 1e-4 (the square root of 1e-8).
    assert out[[0, 2], 2].flatten().tolist() == pytest.approx([0.5, 0.5], abs=1e-4)
    assert out[[1, 3], 2].flatten().tolist() == pytest.approx([0.0, 0.0], abs=1e-3)
    # A batch the group size does not divide uses the largest divisor (5 -> groups of 5).
    assert MinibatchStd(group=4)(torch.randn(5, 2, 3, 3)).shape == (5, 3, 3, 3)
    critic = Critic(DEMO, width=2, mbstd_group=4)
    assert critic(torch.rand(6, *DEMO)).shape == (6,)
