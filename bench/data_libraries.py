"""The streaming-loader candidates of issue 36 against its hard requirement: a run of 2 workers
stopped mid-epoch and resumed on 3 and on 1 must train on exactly the global batches of an
uninterrupted run (none repeated, none skipped). Each candidate serves 1,000 numbered
examples, global batch 12, 10 steps before the stop and 10 after; ranks are simulated in one
process. Prints, for each, whether the resumed batches equal the uninterrupted ones, how many
examples were repeated or skipped, and whether global batch i is the same at 1, 2 and 3 workers.

    python bench/data_libraries.py [--json PATH]

Candidates that are not installed are reported as such: torchdata and litdata are not in
gentrain's stack (`pip install torchdata==0.11.0 litdata==0.2.76` to measure them);
mosaicml-streaming 0.13 cannot be installed beside it at all (it requires numpy<2.2 and
transformers<5).
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

N, BATCH, BEFORE, AFTER = 1000, 12, 10, 10

# A candidate: make(world, state) -> (ranks' batch iterators, save) where save() returns the
# state to resume from (what a checkpoint would keep), and state=None starts afresh.
Candidate = Callable[[int, object], tuple[list, Callable[[], object]]]


def gentrain_stream(work: Path) -> Candidate:
    """gentrain.data: each partition's position (epoch, block, offset) is the whole state;
    each rank knows those of the partitions it reads."""
    from gentrain.data.examples import ImageExamples
    from gentrain.data.sources import Shard, Source
    from gentrain.data.stream import Position, Stream

    class Numbered(Source):
        modality = "image"
        shards = [Shard(f"part-{i}", f"part-{i}", i, 10 << 20, 100, f"part-{i}") for i in range(10)]

        def read(self, shard):
            return [np.array([shard.part * 100 + i], dtype=np.float32) for i in range(100)]

        def heldout_rows(self, shard, rows):
            return set()

    def make(world: int, state):
        stream = Stream(Numbered(), ImageExamples(channels=1, size=None), seed=0)
        start = [Position(**p) for p in state] if state else None
        ranks = [
            stream.batches(batch_size=BATCH, rank=r, world=world, start=start) for r in range(world)
        ]
        known = {}

        def batches(r):
            for batch, positions in ranks[r]:
                known.update(positions)
                yield [int(x) for x in batch.flatten()]

        return [batches(r) for r in range(world)], lambda: [
            known[p].to_dict() for p in range(len(known))
        ]

    return make


def torchdata_map_style(work: Path) -> Candidate:
    """torchdata 0.11's StatefulDataLoader over a map-style dataset with DistributedSampler:
    each rank saves its own state; a new rank resumes from rank 0's."""
    import torch
    from torch.utils.data import DistributedSampler
    from torchdata.stateful_dataloader import StatefulDataLoader

    dataset = list(range(N))

    def make(world: int, state):
        loaders = []
        for rank in range(world):
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=0)
            loader = StatefulDataLoader(dataset, batch_size=BATCH // world, sampler=sampler)
            if state:
                loader.load_state_dict(state[min(rank, len(state) - 1)])
            loaders.append(loader)
        iterators = [iter(loader) for loader in loaders]

        def batches(r):
            for batch in iterators[r]:
                yield [int(x) for x in torch.as_tensor(batch)]

        return [batches(r) for r in range(world)], lambda: [lo.state_dict() for lo in loaders]

    return make


def litdata_streaming(work: Path) -> Candidate:
    """litdata 0.2.76's StreamingDataset (chunks written by litdata.optimize), its state_dict
    and load_state_dict, the distributed environment set per simulated rank."""
    import litdata
    from litdata.streaming import dataset as streaming
    from litdata.utilities.env import _DistributedEnv

    out = work / "litdata"
    if not out.exists():
        litdata.optimize(fn=_identity, inputs=list(range(N)), output_dir=str(out), chunk_size=50,
                         num_workers=1, mode="overwrite")  # fmt: skip

    def make(world: int, state):
        datasets = []
        for rank in range(world):
            streaming._DistributedEnv.detect = staticmethod(
                lambda rank=rank: _DistributedEnv(world_size=world, global_rank=rank, num_nodes=1)
            )
            dataset = litdata.StreamingDataset(str(out), shuffle=True, seed=0, drop_last=True)
            loader = litdata.StreamingDataLoader(dataset, batch_size=BATCH // world, num_workers=0)
            if state:
                loader.load_state_dict(state[min(rank, len(state) - 1)])
            datasets.append((loader, iter(loader)))

        def batches(r):
            for batch in datasets[r][1]:
                yield [int(x) for x in batch]

        return [batches(r) for r in range(world)], lambda: [lo.state_dict() for lo, _ in datasets]

    return make


def _identity(index: int) -> int:
    return index


def global_batches(ranks: list, steps: int) -> list[list[int]]:
    """Each step's examples, all ranks together (sorted: the order within a batch is no
    matter to its gradient)."""
    return [sorted(sum((next(rank) for rank in ranks), [])) for _ in range(steps)]


def measure(make: Candidate) -> dict:
    ranks, _ = make(2, None)
    whole = global_batches(ranks, BEFORE + AFTER)
    same_at = {w: global_batches(make(w, None)[0], BEFORE + AFTER) == whole for w in (1, 3)}
    figures = {"same_batches_at_1_and_3": all(same_at.values())}
    for world in (3, 1):
        ranks, save = make(2, None)
        global_batches(ranks, BEFORE)
        state = save()
        try:
            resumed = global_batches(make(world, state)[0], AFTER)
        except Exception as err:  # a refusal is a result
            figures[f"resume_on_{world}"] = f"refused: {type(err).__name__}: {err}"[:200]
            continue
        expected = sum(whole[BEFORE:], [])
        got = sum(resumed, [])
        before = set(sum(whole[:BEFORE], []))
        figures[f"resume_on_{world}_exact"] = resumed == whole[BEFORE:]
        figures[f"resume_on_{world}_repeated"] = len([i for i in got if i in before])
        figures[f"resume_on_{world}_skipped"] = len(set(expected) - set(got) - before)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, candidate in (
            ("gentrain", gentrain_stream),
            ("torchdata", torchdata_map_style),
            ("litdata", litdata_streaming),
        ):
            try:
                make = candidate(Path(tmp))
            except ImportError as err:
                results[name] = {"installed": False, "why": str(err)}
                continue
            results[name] = measure(make)
    results["mosaicml_streaming"] = {"installed": False, "why": "needs numpy<2.2, transformers<5"}
    results["ray_data"] = {
        "installed": True,
        "why": "open-source Ray 2.x streaming_split iterators keep no position to resume "
        "from; mid-epoch resumption is Anyscale's RayTurbo (beta), not Ray",
    }
    for name, figures in results.items():
        print(f"{name}: {json.dumps(figures)}")
    if args.json:
        flat = {f"{n}_{k}": v for n, f in results.items() for k, v in f.items()}
        args.json.write_text(json.dumps(flat, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
