"""Reference outputs recorded on one machine and checked on another (CPU goldens, GPU check).

``record(path, ops)`` runs the reference of every (op, sample, dtype) on the CPU (in the op's
reference dtype, float64 where the op asks for it) and writes one ``.npz`` file: the output and
gradient leaves as arrays, and a JSON manifest (format, environment, per entry: where its leaves
are, scalar leaves, a SHA-256 of the inputs, or the error the reference raised). Nothing is
pickled: ``load`` reads it with ``allow_pickle=False``. ``Recording.lookup`` is what
``kernels.parity.run_case(case, recorded=...)`` takes: the backend then runs on the machine that
checks, and its output is compared with the recorded one under the backend's tolerances.

Sample inputs are seeded and built on the CPU before they move to a device, so a sample gives the
same inputs everywhere; the digest turns a sample for which that is not true into a failed case.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelkernels.kernels import parity, registry

FORMAT = "modelkernels-parity-recording"
VERSION = 1


class RecordingError(ValueError):
    """A recording file that cannot be read: missing, not an npz, or not in this format."""


def entry_key(op: str, sample: str, dtype: str) -> str:
    return f"{op}/{sample}/{dtype}"


@dataclass
class Recording:
    """Recorded references by ``entry_key``; ``environment`` says where they were made."""

    entries: dict[str, parity.Recorded] = field(default_factory=dict)
    environment: str = ""

    def lookup(self, case: parity.Case) -> parity.Recorded | None:
        return self.entries.get(entry_key(case.op.name, case.sample.name, case.dtype))

    def ops(self) -> list[str]:
        return sorted({key.split("/", 1)[0] for key in self.entries})


def _jsonable(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, str)):
        return True
    return isinstance(x, float) and math.isfinite(x)


def _store(leaves: list[Any], arrays: dict[str, Any]) -> list[dict[str, Any]]:
    """Each leaf as {"array": name} (added to ``arrays``) or {"value": scalar}."""
    out: list[dict[str, Any]] = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, np.ndarray) or parity.is_tensor(leaf):
            name = f"a{len(arrays)}"
            arrays[name] = np.asarray(parity.to_numpy(leaf))
            out.append({"array": name})
            continue
        if isinstance(leaf, np.generic):
            leaf = leaf.item()
        if isinstance(leaf, float) and not math.isfinite(leaf):
            out.append({"float": repr(leaf)})  # nan, inf, -inf: JSON has no literal for them
        elif _jsonable(leaf):
            out.append({"value": leaf})
        else:
            raise TypeError(f"output leaf {i} of type {type(leaf).__name__} cannot be recorded "
                            "(arrays, tensors, numbers, strings and None can)")
    return out


def _restore(spec: list[dict[str, Any]], data: Any) -> list[Any]:
    out: list[Any] = []
    for leaf in spec:
        if "array" in leaf:
            out.append(data[leaf["array"]])
        elif "float" in leaf:
            out.append(float(leaf["float"]))
        else:
            out.append(leaf["value"])
    return out


@dataclass
class RecordRow:
    op: str
    sample: str
    dtype: str
    error: str = ""


def record(path: str, ops: Iterable[str], dtypes: Iterable[str] | None = None, device: str = "cpu",
           environment: str = "") -> list[RecordRow]:
    """Run the reference of every (op, sample, dtype) on ``device`` and write them to ``path``
    (an ``.npz``); one row per entry, with the error when the reference raised."""
    wanted = None if dtypes is None else set(dtypes)
    arrays: dict[str, Any] = {}  # name -> array; Any: savez's keywords include allow_pickle
    entries: dict[str, Any] = {}
    rows: list[RecordRow] = []
    for name in ops:
        op = registry.get_op(name)
        for dtype in op.dtypes:
            if wanted is not None and dtype not in wanted:
                continue
            for sample in op.samples:
                if sample.dtypes is not None and dtype not in sample.dtypes:
                    continue
                row = RecordRow(name, sample.name, dtype)
                stage = "the sample's inputs"
                try:
                    args, kwargs = sample.make(device, dtype)
                    digest = parity.inputs_digest(args, kwargs)
                    stage = "the reference"
                    ref, grads = parity.reference_outputs(op, sample, device, dtype)
                    stage = "storing the outputs"
                    entry = {"inputs": digest, "outputs": _store(parity.leaves(ref), arrays),
                             "grads": None if grads is None else _store(parity.leaves(grads), arrays)}
                except Exception as e:  # recorded as the entry's error; the check reports it as a failure
                    row.error = parity.raised_message(stage, e)
                    entry = {"error": row.error}
                entries[entry_key(name, sample.name, dtype)] = entry
                rows.append(row)
    manifest = {"format": FORMAT, "version": VERSION, "environment": environment, "entries": entries}
    with open(path, "wb") as f:  # a file object: savez would otherwise append ".npz" to the name
        arrays["__manifest__"] = np.array(json.dumps(manifest))
        np.savez_compressed(f, **arrays)
    return rows


def load(path: str) -> Recording:
    """Read a recording written by ``record``; ``RecordingError`` names what is wrong with it."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RecordingError(f"recording {path!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise RecordingError(f"recording {path!r} is not an .npz file written by --record: {e}") from None
    with data:
        if "__manifest__" not in data.files:
            raise RecordingError(f"recording {path!r} has no manifest: not written by --record")
        try:
            manifest = json.loads(str(data["__manifest__"]))
        except ValueError as e:
            raise RecordingError(f"recording {path!r}: the manifest is not valid JSON ({e})") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise RecordingError(f"recording {path!r} has format {manifest.get('format')!r} version "
                                 f"{manifest.get('version')!r}; this version reads {FORMAT!r} version {VERSION}")
        rec = Recording(environment=str(manifest.get("environment", "")))
        try:
            for key, entry in manifest["entries"].items():
                if "error" in entry:
                    rec.entries[key] = parity.Recorded([], None, "", str(entry["error"]))
                    continue
                grads = None if entry["grads"] is None else _restore(entry["grads"], data)
                rec.entries[key] = parity.Recorded(_restore(entry["outputs"], data), grads, entry["inputs"])
        except (KeyError, TypeError, AttributeError) as e:
            raise RecordingError(f"recording {path!r} is damaged: {type(e).__name__} {e}") from None
    return rec
