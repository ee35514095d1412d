"""SAM2CT 3D propagation: both directions, empty-mask stop, native grid, MCM, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2ct.model import SAM2CTConfig, SAM2CTSegmenter, build_sam2ct, save_checkpoint
from sam2ct.model.propagate import propagate
from sam2ct.prompts import Prompt, PromptKind
from sam2ct.registry import choose_segmenter

SMALL = SAM2CTConfig(image_size=64, chunk_size=4)
SHAPE = (9, 40, 56)  # slices, rows, columns: not square, not the model size
LINE = Prompt(PromptKind.LINE, 4, np.array([[20.0, 15.0], [34.0, 24.0]]), "line-1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_sam2ct(SMALL, seed=0)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """A bright ellipsoidal 'lesion' in noisy soft tissue, HU."""
    z, y, x = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    lesion = ((z - 4) / 3.5) ** 2 + ((y - 20) / 8) ** 2 + ((x - 27) / 10) ** 2 < 1
    noise = np.random.default_rng(0).normal(0, 15, SHAPE)
    return (np.where(lesion, 80.0, -20.0) + noise).astype(np.float32)


def _forcing(model: torch.nn.Module, empty: set[tuple[int, int]]
             ) -> torch.utils.hooks.RemovableHandle:
    """Make the decoder see an object (large positive logits) except at (call, batch row) in
    ``empty``.

    Random weights decide nothing useful; this pins the decoder's verdict so the propagation
    logic around it (order, stop rule, memory) is what the test exercises.
    """
    calls = {"n": 0}

    def hook(_module, _args, output):
        masks, ious, tokens, scores = output
        sign = torch.ones(masks.shape[0], device=masks.device)
        for row in range(masks.shape[0]):
            if (calls["n"], row) in empty:
                sign[row] = -1.0
        calls["n"] += 1
        return (10.0 * sign.view(-1, 1, 1, 1).expand_as(masks).clone(), ious, tokens,
                10.0 * sign.view(-1, 1).expand_as(scores).clone())

    return model.sam_mask_decoder.register_forward_hook(hook)


def _run(model, volume, prompt_index=4, lookahead=False):
    coords = np.array([[20.0, 20.0], [40.0, 30.0]])
    labels = np.array([4, 4])
    with torch.inference_mode():
        return propagate(model, volume, coords, labels, prompt_index, SMALL, lookahead)


@pytest.mark.parametrize("lookahead", [False, True])
def test_propagation_reaches_slice_zero_and_the_last_slice(model, volume, lookahead) -> None:
    handle = _forcing(model, set())
    try:
        result = _run(model, volume, lookahead=lookahead)
    finally:
        handle.remove()
    # both directions in lockstep: 5 and 3, then 6 and 2, ... down to slice 0 and up to 8
    assert result.visited == [4, 5, 3, 6, 2, 7, 1, 8, 0]
    assert result.stopped_at == {1: None, -1: None}
    assert sorted(result.masks) == list(range(9))
    assert all(m.shape == SHAPE[1:] and m.all() for m in result.masks.values())


@pytest.mark.parametrize("lookahead, empty", [
    # decoder calls: 0 = prompt slice 4; 1 = slices (5, 3); 2 = (6, 2) -> up empty at 6;
    # 3 = (1,) -> down empty at 1
    (False, {(2, 0), (3, 0)}),
    # looking ahead, call 3 = (7, 1) is launched before call 2's empty slice 6 is seen: slice 7
    # is computed but dropped, slice 1 (row 1) is empty; call 4 = (0,) is dropped too
    (True, {(2, 0), (3, 1)}),
])
def test_each_direction_stops_at_the_first_empty_mask(model, volume, lookahead, empty) -> None:
    handle = _forcing(model, empty)
    try:
        result = _run(model, volume, lookahead=lookahead)
    finally:
        handle.remove()
    assert result.visited == [4, 5, 3, 6, 2, 1]
    assert result.stopped_at == {1: 6, -1: 1}
    assert sorted(result.masks) == [2, 3, 4, 5]


def test_looking_ahead_gives_the_same_propagation(model, volume) -> None:
    """Unforced random weights: checking each mask one step late changes nothing visible."""
    plain, ahead = _run(model, volume), _run(model, volume, lookahead=True)
    assert ahead.visited == plain.visited and ahead.stopped_at == plain.stopped_at
    assert sorted(ahead.masks) == sorted(plain.masks)
    assert all(np.array_equal(ahead.masks[i], plain.masks[i]) for i in plain.masks)


def test_empty_prompt_slice_stops_upwards_but_still_propagates_downwards(model, volume) -> None:
    """As published: the backward pass runs from the prompt memory even when the prompt
    slice's own mask is empty; the forward pass stops at once."""
    handle = _forcing(model, {(0, 0)})
    try:
        result = _run(model, volume)
    finally:
        handle.remove()
    assert result.visited == [4, 3, 2, 1, 0]
    assert result.stopped_at == {1: 4, -1: None}
    assert sorted(result.masks) == [0, 1, 2, 3]  # the empty prompt slice holds no mask


def test_memory_encoder_receives_memory_conditioned_features(model, volume) -> None:
    attended, encoded, images = [], [], []
    hooks = [
        model.memory_attention.register_forward_hook(lambda m, a, out: attended.append(out)),
        model.memory_encoder.register_forward_pre_hook(lambda m, a: encoded.append(a[0])),
        model.image_encoder.register_forward_hook(
            lambda m, a, out: images.append(out["vision_features"])),
        _forcing(model, set()),
    ]
    try:
        _run(model, volume)
    finally:
        for h in hooks:
            h.remove()
    assert len(encoded) == 1 + 4 and len(attended) == 4  # prompt, then 4 lockstep steps
    # prompt slice: image features + SAM2's no-memory embedding (slice 4 = first of chunk 4..7)
    expected = images[0][0:1] + model.no_mem_embed.view(1, -1, 1, 1)
    assert torch.allclose(encoded[0], expected, atol=1e-6)
    for out, enc in zip(attended, encoded[1:], strict=True):
        assert torch.equal(enc, out.permute(1, 2, 0).reshape(enc.shape))
    raw = images[0][1:2]  # slice 5's raw image features differ from what the encoder got
    assert not torch.allclose(encoded[1][0:1], raw, atol=1e-3)


def test_cpu_encoder_batch_follows_the_input_size() -> None:
    from sam2ct.model.propagate import slices_per_encode

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    sizes = {size: slices_per_encode(SAM2CTConfig(image_size=size), cpu)
             for size in (1024, 512, 256, 128)}
    assert sizes == {1024: 1, 512: 1, 256: 4, 128: 8}
    assert slices_per_encode(SMALL, cpu) == SMALL.chunk_size  # never more than a chunk
    assert slices_per_encode(SAM2CTConfig(image_size=1024), gpu) == 8


def test_one_slice_per_encode_encodes_only_the_slices_visited(model, volume,
                                                              monkeypatch) -> None:
    import importlib

    module = importlib.import_module("sam2ct.model.propagate")  # the package exports a function
    monkeypatch.setattr(module, "CPU_PIXELS_PER_ENCODE", 0)  # as at 512 px and more
    batches: list[int] = []
    hooks = [model.image_encoder.register_forward_pre_hook(
        lambda m, a: batches.append(a[0].shape[0])), _forcing(model, {(2, 0), (3, 0)})]
    try:
        result = _run(model, volume)
    finally:
        for h in hooks:
            h.remove()
    assert result.visited == [4, 5, 3, 6, 2, 1]
    assert batches == [1] * 6  # nothing beyond a direction's stop is encoded


def test_every_stage_runs_in_a_named_profiler_range(model, volume, monkeypatch) -> None:
    """bench/gpu_check.py's per-stage breakdown reads these ``sam2ct.<stage>`` ranges."""
    import importlib
    from collections import Counter

    module = importlib.import_module("sam2ct.model.propagate")
    ranges: Counter[str] = Counter()

    def recording(name: str):
        ranges[name] += 1
        return torch.profiler.record_function(name)

    monkeypatch.setattr(module, "record_function", recording)
    handle = _forcing(model, set())
    try:
        _run(model, volume)
    finally:
        handle.remove()
    # 9 slices: prompt + 4 lockstep steps decoded; encoded in chunks 4..7, 0..3, 8; each step's
    # memory attention in two ranges (gathering the bank, attending to it)
    assert ranges == {"sam2ct.encode": 3, "sam2ct.memory_attention": 8, "sam2ct.decode": 5,
                      "sam2ct.memory_encode": 5, "sam2ct.resample": 5}
    assert {name.removeprefix("sam2ct.") for name in ranges} == set(module.STAGES)


def test_chunked_encoding_matches_one_slice_at_a_time(model, volume) -> None:
    """Chunks of ``chunk_size`` give the features that one slice per call gives."""
    from sam2ct.model.propagate import ChunkedEncoder

    cpu = torch.device("cpu")
    chunked = ChunkedEncoder(model, volume, SMALL, cpu, ahead=SMALL.chunk_size)
    single = ChunkedEncoder(model, volume, SMALL, cpu, ahead=1)
    order = [(4, 1), (5, 1), (3, -1), (6, 1), (2, -1), (7, 1), (1, -1), (8, 1), (0, -1)]
    with torch.inference_mode():
        for index, direction in order:
            a, b = chunked.get(index, direction), single.get(index, direction)
            assert torch.allclose(a.vision_feat, b.vision_feat, atol=1e-4), f"slice {index}"
            for x, y in zip(a.high_res, b.high_res, strict=True):
                assert torch.allclose(x, y, atol=1e-4), f"slice {index}"
    assert single.encoded == chunked.encoded == 9 and not chunked.cache and not single.cache


def test_lockstep_directions_match_one_direction_at_a_time(model, volume) -> None:
    """Batching the two directions gives the memories that 'up, clear, then down' gives."""
    from sam2ct.model.memory import MemoryBank
    from sam2ct.model.preprocess import (
        intensity_range,
        model_view,
        point_inputs,
        preprocess_slices,
    )
    from sam2ct.model.propagate import encode_images, prompt_step, track_step

    memories: list[torch.Tensor] = []
    hooks = [model.memory_encoder.register_forward_hook(
        lambda m, a, out: memories.append(out["vision_features"].clone())),
        _forcing(model, set())]
    try:
        _run(model, volume)
        batched = {4: memories[0][0]}
        for step, mem in enumerate(memories[1:], start=1):
            batched[4 + step], batched[4 - step] = mem[0], mem[1]
        memories.clear()
        with torch.inference_mode():
            images = preprocess_slices(model_view(volume, SMALL), SMALL,
                                       scale=intensity_range(volume, SMALL))
            feats = encode_images(model, images)
            coords, labels = np.array([[20.0, 20.0], [40.0, 30.0]]), np.array([4, 4])
            first = prompt_step(model, feats[4], point_inputs(coords, labels), SMALL)
            bank = MemoryBank(SMALL)
            bank.set_prompt(4, first.memory)
            order = [5, 6, 7, 8, 3, 2, 1, 0]
            for i in order:
                if i == 3:
                    bank.clear()
                bank.add(i, track_step(model, feats[i], [bank], [i], 9).memory)
    finally:
        for h in hooks:
            h.remove()
    sequential = dict(zip([4] + order, [m[0] for m in memories], strict=True))
    assert sorted(batched) == sorted(sequential) == list(range(9))
    for i in range(9):
        assert torch.allclose(batched[i], sequential[i], atol=1e-4), f"slice {i} differs"
    assert not torch.allclose(sequential[8], sequential[0], atol=1e-3)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, model) -> SAM2CTSegmenter:
    path = tmp_path_factory.mktemp("seg") / "sam2ct.pt"
    save_checkpoint(path, model, SMALL)
    return SAM2CTSegmenter.from_checkpoint(Path(path), device="cpu")


def test_segmenter_output_on_native_grid_and_deterministic(segmenter, volume) -> None:
    arrow = Prompt(PromptKind.ARROW, 2, np.array([[27.0, 20.0], [50.0, 35.0]]), "arrow-1")
    box = Prompt(PromptKind.ELLIPSE, 6, np.array([[17, 20], [37, 20], [27, 14], [27, 26]]))
    first = segmenter.segment(volume, (3.0, 0.8, 0.8), [LINE, arrow, box])
    second = segmenter.segment(volume, (3.0, 0.8, 0.8), [LINE, arrow, box])
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert a.shape == SHAPE and a.dtype == bool
        assert np.array_equal(a, b)
    assert segmenter.name == "sam2ct" and len(segmenter.checkpoint_sha256) == 64


def test_segmenter_calls_from_threads_take_turns(segmenter, volume) -> None:
    """Flows may call one cached segmenter from several task threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    active, overlaps = [0], []

    def count(_module, _args):
        active[0] += 1
        overlaps.append(active[0])

    def uncount(_module, _args, _out):
        active[0] -= 1

    hooks = [segmenter.model.sam_mask_decoder.register_forward_pre_hook(count),
             segmenter.model.sam_mask_decoder.register_forward_hook(uncount)]
    try:
        with ThreadPoolExecutor(2) as pool:
            masks = list(pool.map(lambda _: segmenter.segment(volume, (3.0, 0.8, 0.8), [LINE]),
                                  range(2)))
    finally:
        for h in hooks:
            h.remove()
    assert np.array_equal(masks[0][0], masks[1][0])
    assert overlaps and max(overlaps) == 1  # never two propagations inside the model at once
    assert len(segmenter.last_propagations) == 1


def test_segmenter_rejects_a_prompt_outside_the_volume(segmenter, volume) -> None:
    bad = Prompt(PromptKind.POINT, 12, np.array([[3.0, 3.0]]), "p-9")
    with pytest.raises(ValueError, match="slice 12 outside"):
        segmenter.segment(volume, (3.0, 0.8, 0.8), [bad])


def test_registry_loads_sam2ct_from_a_checkpoint_path(segmenter) -> None:
    choice = choose_segmenter(segmenter.report.path, device="cpu")
    assert isinstance(choice.segmenter, SAM2CTSegmenter) and choice.warning is None
    assert choice.segmenter.checkpoint_sha256 == segmenter.checkpoint_sha256


def test_cuda_graphs_only_for_cuda_inference(model) -> None:
    from sam2ct.model.propagate import track_graphs

    assert SAM2CTConfig().cuda_graphs  # on by default, where it applies
    with torch.inference_mode():
        assert track_graphs(model, SMALL) is None  # the model lives on the CPU


def test_graph_cache_counts_sightings_per_run() -> None:
    """A shape seen once per run (a bank filling up) is never captured, however many runs."""
    from sam2ct.model.graphs import GraphCache

    cache, calls = GraphCache(capture_after=2), []

    def double(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(x.shape)
        return (x * 2,)

    for _ in range(3):
        cache.new_run()
        [out] = cache.run(double, "key", [torch.ones(3)])
        [other] = cache.run(double, "key", [torch.ones(4)])  # another shape, another signature
        assert torch.equal(out, torch.full((3,), 2.0)) and other.shape == (4,)
    # on the CPU a second sighting in one run would try to capture and fail
    assert len(calls) == 6 and not cache.graphs and cache.replays == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_give_the_eager_masks(volume) -> None:
    from dataclasses import replace

    from sam2ct.model.propagate import track_graphs

    gpu = build_sam2ct(SMALL, seed=0).cuda()
    coords, labels = np.array([[20.0, 20.0], [40.0, 30.0]]), np.array([4, 4])
    tall = np.tile(volume, (3, 1, 1))  # 27 slices: 13 steps a side, the bank full from step 8
    runs = {}
    for graphs in (False, True):
        config = replace(SMALL, cuda_graphs=graphs)
        with torch.inference_mode():
            for _ in range(2):  # the second run replays what the first captured
                runs[graphs] = propagate(gpu, tall, coords, labels, 13, config)
    assert runs[True].visited == runs[False].visited
    assert all(np.array_equal(runs[True].masks[i], runs[False].masks[i]) for i in runs[False].masks)
    with torch.inference_mode():
        assert track_graphs(gpu, SMALL).graphs
