"""Cut a backbone in two at a layer-group boundary: ``backbone(x) == suffix(prefix(x))``.

Run with the last N layer groups trainable, everything before them is a fixed function of the image (in
eval mode), so its output can be computed once and cached; only the suffix runs every step. One
mechanism for every family: the backbone is traced with ``torch.fx`` (timm's own leaf modules and
functions kept whole, as its feature extractor does), and the graph is cut just before the first
operation that touches a parameter of the first trainable group. The cut is accepted only when exactly
one tensor crosses it (the activation to cache), and it is then checked on a probe batch: prefix +
suffix must reproduce the full forward to float tolerance. Anything else raises :class:`CannotSplit`
with a one-line reason, and the caller trains online.

The two halves are ``GraphModule`` s over the backbone's own submodules (shared, not copied): training the
suffix trains the classifier's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

# Leaf modules whose training-mode forward is random: in a frozen prefix they are active online (only batch
# norm is held in eval mode) but not in the cache, so a prefix holding one is not exact. Stochastic depth
# (torchvision's StochasticDepth, timm's DropPath) is traced through: its prefix traces differently in
# training and eval mode, which is checked too.
STOCHASTIC = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")


class CannotSplit(Exception):
    """This backbone cannot be cut at that boundary; the message says why in one line."""


@dataclass
class Split:
    """``prefix`` maps images to the activation at ``boundary`` (one image: ``shape``); ``suffix`` maps it
    to pooled features. ``first_group``: the first layer group in the suffix."""

    prefix: nn.Module
    suffix: nn.Module
    boundary: str
    shape: tuple[int, ...]
    first_group: int
    stochastic_prefix: list[str]  # modules in the prefix that are random in training mode (not exact)

    def describe(self) -> str:
        return f"after {self.boundary}, activations {'x'.join(map(str, self.shape))} per image"


def _tracer() -> fx.Tracer:
    try:  # timm's modules and functions that do not trace (shape asserts, dynamic padding) stay whole
        from timm.layers import get_notrace_functions, get_notrace_modules

        leaves, functions = tuple(get_notrace_modules()), tuple(get_notrace_functions())
    except ImportError:  # pragma: no cover - timm is a dependency
        leaves, functions = (), ()

    class Tracer(fx.Tracer):
        def __init__(self) -> None:
            super().__init__(autowrap_functions=tuple(f for f in functions if callable(f)))

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    return Tracer()


def _node_groups(node: fx.Node, group_of: dict[str, int]) -> set[int]:
    """The layer groups of the parameters a node reads (a module call: every parameter under it)."""
    if node.op not in ("call_module", "get_attr"):
        return set()
    target = str(node.target)
    return {g for name, g in group_of.items() if name == target or name.startswith(f"{target}.")}


def _cut(backbone: nn.Module, group_of: dict[str, int], first_group: int, training: bool):
    """Trace ``backbone`` in training or eval mode (code that branches on ``self.training`` is fixed at
    trace time) and cut the graph before the first node that reads a parameter of ``first_group`` or later.
    Returns (prefix graph, suffix graph, the boundary node)."""
    was_training = backbone.training
    backbone.train(training)
    try:
        graph = _tracer().trace(backbone)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CannotSplit(f"the backbone does not trace with torch.fx ({first})") from err
    finally:
        backbone.train(was_training)
    nodes = list(graph.nodes)
    late = (i for i, n in enumerate(nodes) if any(g >= first_group for g in _node_groups(n, group_of)))
    first = next(late, None)
    if first is None:
        raise CannotSplit(f"no operation of the backbone uses layer group {first_group}")
    # nodes computed from the image; the others are constants (or optional arguments left at their default)
    dependent: set[fx.Node] = {nodes[0]}
    for n in nodes[1:]:
        if any(a in dependent for a in n.all_input_nodes):
            dependent.add(n)
    # the cut may move back over parameter-free operations (a concatenation, a pooling) to where one
    # activation crosses it
    lowest = first
    while lowest > 1 and not _node_groups(nodes[lowest - 1], group_of):
        lowest -= 1
    crossing: list[fx.Node] = []
    for cut in range(first, lowest - 1, -1):
        early = set(nodes[:cut]) & dependent
        crossing = list(dict.fromkeys(a for n in nodes[cut:] for a in n.all_input_nodes if a in early))
        if len(crossing) == 1 and crossing[0].op != "placeholder":
            break
    else:
        names = ", ".join(a.name for a in crossing)
        raise CannotSplit(
            f"{len(crossing)} values cross the boundary before layer group {first_group} ({names}); "
            "one activation tensor is needed"
        )
    before, after = nodes[:cut], nodes[cut:]
    late_frozen = sorted({g for n in after for g in _node_groups(n, group_of) if g < first_group})
    if late_frozen:
        raise CannotSplit(f"layer group(s) {late_frozen} run after group {first_group}: no clean prefix")
    boundary = crossing[0]
    prefix, env = fx.Graph(), {}
    for n in before:
        env[n] = prefix.node_copy(n, lambda a: env[a])
    prefix.output(env[boundary])
    suffix = fx.Graph()
    senv = {boundary: suffix.placeholder("activation")}
    for n in before:  # constants the suffix reads (a mask, a flag) are recomputed there
        if n not in dependent:
            senv[n] = suffix.node_copy(n, lambda a: senv[a])
    for n in after:
        senv[n] = suffix.node_copy(n, lambda a: senv[a])
    return prefix, suffix, boundary


class Suffix(nn.Module):
    """The suffix as traced in training mode and in eval mode, the one matching the backbone's mode run.
    The backbone is referenced, not registered: this module holds no state of its own."""

    def __init__(self, backbone: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph) -> None:
        super().__init__()
        self.training_half = fx.GraphModule(backbone, train_graph, "SuffixTrain")
        self.eval_half = fx.GraphModule(backbone, eval_graph, "SuffixEval")
        object.__setattr__(self, "_backbone", backbone)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        half = self.training_half if self._backbone.training else self.eval_half
        return half(activation)


def split_backbone(
    backbone: nn.Module, layer_groups: list[list[str]], first_group: int, probe: torch.Tensor
) -> Split:
    """Cut ``backbone`` before layer group ``first_group`` and check the halves on ``probe`` (a small
    batch of inputs). Raises :class:`CannotSplit` (one line) when it cannot."""
    if not 0 < first_group < len(layer_groups):
        raise CannotSplit(f"layer group {first_group} is not an inner boundary of {len(layer_groups)} groups")
    group_of = {name: g for g, names in enumerate(layer_groups) for name in names}
    prefix_graph, eval_suffix, boundary = _cut(backbone, group_of, first_group, training=False)
    train_prefix, train_suffix, _ = _cut(backbone, group_of, first_group, training=True)
    stochastic_code = train_prefix.python_code("self").src != prefix_graph.python_code("self").src
    prefix = fx.GraphModule(backbone, prefix_graph, "Prefix")
    prefix.graph.eliminate_dead_code()
    prefix.recompile()
    suffix = Suffix(backbone, train_suffix, eval_suffix)
    for half in (suffix.training_half, suffix.eval_half):
        half.graph.eliminate_dead_code()
        half.recompile()

    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            full = backbone(probe)
            activation = prefix(probe)
            halves = suffix(activation)
    except Exception as err:
        raise CannotSplit(f"the cut halves do not run ({type(err).__name__}: {str(err)[:100]})") from err
    finally:
        backbone.train(was_training)
    if not isinstance(activation, torch.Tensor) or halves.shape != full.shape:
        raise CannotSplit("the cut halves do not give the backbone's output shape")
    gap = float((halves - full).abs().max())
    if not gap <= 1e-4 * (float(full.abs().max()) or 1.0):
        raise CannotSplit(f"prefix + suffix differ from the full forward by {gap:.3g} on a probe batch")
    # random in training mode: online training runs the frozen prefix in training mode (only batch norm
    # is held in eval mode), so dropout or stochastic depth there makes the cache differ from online
    modules = dict(backbone.named_modules())
    stochastic = sorted(
        str(n.target)
        for n in prefix.graph.nodes
        if n.op == "call_module"
        and type(modules[str(n.target)]).__name__ in STOCHASTIC
        and float(getattr(modules[str(n.target)], "p", 0.0) or 0.0) > 0
    )
    if stochastic_code:
        stochastic.append("code that runs differently in training mode")
    return Split(prefix, suffix, _where(boundary), tuple(activation.shape[1:]), first_group, stochastic)


def _where(node: fx.Node) -> str:
    """The module that computes ``node`` (``features.16``), else the node's own name."""
    if node.op == "call_module":
        return str(node.target)
    stack = list(node.meta.get("nn_module_stack", {}))
    return stack[-1] if stack and stack[-1] else node.name
