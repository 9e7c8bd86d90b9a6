"""Exact sampling at the cost of about one forward pass (instead of D).

A hidden unit of degree m depends only on the inputs at ordering positions <= m, so once those are fixed
its value never changes again. For each mask we permute the network once (a cached "plan"): inputs in
generation order and every layer's units sorted by degree, so the units of degree p form one contiguous
slice and all units of degree <= p a prefix. The walk then visits each degree p that has units (an
"event"), in order:

    for each layer l, the units of degree p are final now (h_0 = z, the inputs fixed so far):
        h_l[:, slice_l(p)] = act(b_l + h_{l-1}[:, :end_{l-1}(p)] @ W_l[:end_{l-1}(p), slice_l(p)])
    the last layer's new units add their part to the output parameters of every position q >= p:
        params[:, q >= p] += h_L[:, slice_L(p)] @ W_out[slice_L(p), q >= p]
    positions p .. (next event - 1) now have all their parameters: draw them in one operation
        z[:, p:next] = draw(params[:, p:next], the rows' pre-drawn noise for those positions)

Each hidden unit is computed exactly once, from exactly the inputs its mask lets it see, and each output
parameter is accumulated once per unit: about one forward pass of arithmetic. Where the inputs feed the
outputs (direct connections, or no hidden layer), position q needs z_{q-1}, so every position is drawn on
its own and then adds its part to the later positions' parameters. Mask conditioning is folded into the
biases.

The cost is the number of small operations, not their arithmetic: a 784-500 MADE has about 370 distinct
degrees, so about 1,450 operations, where drawing one position per step took about 3,100. Slicing a tensor
costs about what a small operation does, so every slice is made once: the weights' in the plan, the
buffers' in a cached `_Walk` per batch size. On a GPU the small operations are kernel launches, each
costing more than its arithmetic, so there the whole walk is captured once per mask and batch size as a
CUDA graph and replayed as one launch (`GraphedWalk`). The randomness is the reference sampler's
(`sampling.draw_randomness`) consumed in the same order, so both samplers give the same samples for the
same seed: identically for discrete heads (unless a probability lies within float rounding of its uniform
draw) and within float tolerance for real ones.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .density import Density, MADEDensity
from .masks import layer_masks
from .sampling import Randomness, draw_randomness, sample_per_mask


@dataclass
class _Event:
    """The weights of one event (degree p = `first`), sliced once: per layer the bias and weights of its
    units of degree p, the output weights those units feed, and the positions drawn after it."""

    layers: list[tuple[torch.Tensor, torch.Tensor, int, int, int] | None]  # bias, W, below_end, start, end
    out: tuple[torch.Tensor, int] | None  # W_out[slice_L(p), p*P:] and p*P; None if the last layer has none
    first: int  # positions first (= p) .. end - 1 are drawn after the event
    end: int
    input_weights: torch.Tensor | None  # (1, (D - end)*P): position `first`'s part in the later positions


@dataclass
class _MaskPlan:
    """One mask's network, permuted: inputs by position, every layer's units sorted by degree."""

    ordering: torch.Tensor  # (D,) the dimension generated at each position
    weights: list[torch.Tensor]  # (H_l, H_{l-1}) masked W_l, a unit's weights contiguous; layer 0's columns
    # are input positions
    biases: list[torch.Tensor]  # (H_l,) bias + mask-conditioning term
    slices: list[list[tuple[int, int]]]  # per layer, per degree p in 0..D: units [start, end) of degree p
    out_weights: torch.Tensor  # (H_L, D*P): last layer's units -> parameters, column q*P + r (position q)
    out_bias: torch.Tensor  # (D*P,)
    input_weights: torch.Tensor | None  # (D, D*P): input positions -> parameters (direct, or no hidden layer)
    params_per_dim: int
    position: torch.Tensor | None = None  # (D,) the position of each dimension: argsort(ordering)
    events: list[_Event] = field(default_factory=list)
    walks: OrderedDict = field(default_factory=OrderedDict)  # rows -> _Walk (CPU): buffers and their slices
    graphs: dict = field(default_factory=dict)  # rows -> GraphedWalk (CUDA), dropped with the plan

    def __post_init__(self) -> None:
        D, P = len(self.ordering), self.params_per_dim
        self.position = torch.argsort(self.ordering)
        has_units = [any(s[p][0] < s[p][1] for s in self.slices) for p in range(D)]
        one_at_a_time = self.input_weights is not None  # position q then needs z_{q-1}
        degrees = [p for p in range(D) if p == 0 or has_units[p] or one_at_a_time]
        for i, p in enumerate(degrees):
            layers = []
            for layer, (weights, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
                start, end = self.slices[layer][p]
                # the units below that are final: the inputs before position p, or the layer below's prefix
                below_end = p if layer == 0 else self.slices[layer - 1][p][1]
                layers.append(
                    (bias[start:end], weights[start:end, :below_end].t(), below_end, start, end)
                    if start < end
                    else None
                )
            out = None
            if self.weights and layers[-1] is not None:  # units of degree p feed the positions q >= p
                _, _, _, start, end = layers[-1]
                out = (self.out_weights[start:end, p * P :], p * P)
            end = degrees[i + 1] if i + 1 < len(degrees) else D
            input_weights = None
            if one_at_a_time and end < D:  # position p adds its part to the parameters of q > p
                input_weights = self.input_weights[p : p + 1, end * P :]
            self.events.append(_Event(layers, out, p, end, input_weights))


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {mask: (weights version, plan)}


def _weights_version(model: MADEDensity) -> tuple:
    return tuple(p._version for p in model.parameters())  # bumped by every in-place update (optimizer steps)


def _plan(model: Density, k: int) -> tuple[MADEDensity, _MaskPlan]:
    """The network that computes component k, and the plan of its mask, cached until the weights change."""
    density, mask = model.component(k)
    cache = _PLANS.setdefault(density, {})
    version = (_weights_version(density), density.device, density.dtype)
    if mask not in cache or cache[mask][0] != version:
        network = density.network
        cache[mask] = (
            version,
            build_plan(density, network.input_degrees[mask], network.hidden_degrees(mask)),
        )
    return density, cache[mask][1]


@torch.no_grad()
def build_plan(
    model: MADEDensity, input_degrees: torch.Tensor, hidden_degrees: list[torch.Tensor]
) -> _MaskPlan:
    """The plan of any mask configuration of the model's network, given by its degrees (conditional
    sampling uses its own)."""
    net = model.network
    D, P = model.n_dims, net.params_per_dim
    input_degrees = input_degrees.to(model.device)
    hidden_degrees = [degrees.to(model.device) for degrees in hidden_degrees]
    masks = layer_masks(input_degrees, hidden_degrees, P)
    ordering = torch.argsort(input_degrees)  # position -> dimension
    previous_order = ordering
    weights, biases, slices = [], [], []
    for layer, degrees, mask in zip(net.hidden, hidden_degrees, masks.hidden, strict=True):
        order = torch.argsort(degrees, stable=True)  # the units by degree
        bias = layer.bias + ((layer.cond_weight * mask).sum(1) if layer.cond_weight is not None else 0)
        weights.append((layer.weight * mask)[order][:, previous_order].contiguous())
        biases.append(bias[order].contiguous())
        bounds = torch.searchsorted(degrees[order], torch.arange(D + 2, device=degrees.device)).tolist()
        slices.append([(bounds[p], bounds[p + 1]) for p in range(D + 1)])
        previous_order = order
    out = (net.output.weight * masks.output).view(P, D, -1)[:, ordering][:, :, previous_order]  # (P, D, H_L)
    out_weights = out.permute(2, 1, 0).reshape(-1, D * P).contiguous()  # (H_L, D*P), column q*P + r
    out_bias = net.output.bias.view(P, D)[:, ordering].t().reshape(D * P).contiguous()
    input_weights = None if weights else out_weights  # no hidden layer: the output layer reads the inputs
    if net.direct is not None:
        direct = (net.direct.weight * masks.direct).view(P, D, D)[:, ordering][:, :, ordering]
        direct = direct.permute(2, 1, 0).reshape(D, D * P)  # (D, D*P): from position j to position q
        input_weights = direct.contiguous() if input_weights is None else input_weights + direct
    return _MaskPlan(ordering, weights, biases, slices, out_weights, out_bias, input_weights, P)


IN_PLACE_ACTIVATIONS = {  # activations applied where the units were written; others go through a copy
    "relu": torch.Tensor.relu_,
    "tanh": torch.Tensor.tanh_,
    "sigmoid": torch.Tensor.sigmoid_,
}


class _Walk:
    """The walk of one plan over buffers for `rows` rows, with every slice of them made once. Not for two
    threads at a time: `walk` hands a cached one to one caller (`lock`) and makes a fresh one otherwise."""

    def __init__(self, model: MADEDensity, plan: _MaskPlan, rows: int):
        # Normal tensors, not inference tensors, whichever mode the first call came in: the buffers are
        # written in place at every later call, which inference mode would forbid outside it.
        with torch.inference_mode(False):
            self._setup(model, plan, rows)

    def _setup(self, model: MADEDensity, plan: _MaskPlan, rows: int) -> None:
        D, P = model.n_dims, plan.params_per_dim
        R = model.likelihood.noise_per_dim
        options = dict(device=plan.out_bias.device, dtype=plan.out_bias.dtype)
        # No reference to the model itself: the cache of plans is keyed weakly by the model, and a replaced
        # version must be freed with its walks.
        self.plan, self.P = plan, P
        self.likelihood = model.likelihood
        self.activation = model.network.activation  # the activation module
        self.activation_in_place = IN_PLACE_ACTIVATIONS.get(model.network.config.activation)
        self.lock = threading.Lock()
        # (rows, X) buffers stored column by column: a unit's (or a position's) values for all rows are
        # contiguous, so the slices of a few units that every step reads and writes are contiguous blocks.
        self.z = torch.zeros(D, rows, **options).t()  # samples by position
        self.hidden = [torch.zeros(len(bias), rows, **options).t() for bias in plan.biases]
        self.params = torch.zeros(D * P, rows, **options).t()  # output parameters by position, accumulated
        self.prepared = torch.zeros(rows, D, R, **options)  # the noise by position, as the head draws from it
        self.bernoulli = model.likelihood.name == "bernoulli"
        self.threshold = torch.zeros(D, rows, **options).t()  # Bernoulli: z = 1 where logit > logit(u)
        self.steps = [self._bind(event, P) for event in plan.events]

    def _bind(self, event: _Event, P: int) -> tuple:
        """The event's weights with the buffer slices they read and write."""
        layers = []
        below = self.z
        for step, h in zip(event.layers, self.hidden, strict=True):
            if step is not None:
                bias, weights, below_end, start, end = step
                layers.append((bias, below[:, :below_end], weights, h[:, start:end]))
            below = h
        out = None
        if event.out is not None:
            weights, first_column = event.out
            start, end = event.layers[-1][3:]
            out = (self.params[:, first_column:], self.hidden[-1][:, start:end], weights)
        first, end = event.first, event.end
        draw = (
            first,
            end,
            self.params[:, first * P : end * P],
            self.threshold[:, first:end],
            self.prepared[:, first:end],
            self.z[:, first:end],
        )
        feed = None
        if event.input_weights is not None:  # z_first's part in the parameters of the positions after it
            feed = (self.params[:, end * P :], self.z[:, first:end], event.input_weights)
        return layers, out, draw, feed

    def __call__(self, noise: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, D) standardised samples in the dimensions' own order; noise (rows, D, R) in input order.
        `observed` (rows, n_obs), standardised and by position, fixes the first n_obs positions instead of
        drawing them (conditional sampling: the plan's ordering puts the observed dimensions first)."""
        with torch.inference_mode(False), torch.no_grad():
            return self._walk(noise, observed)

    def _walk(self, noise: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        plan, likelihood, P = self.plan, self.likelihood, self.P
        activation = self.activation_in_place
        n_observed = 0 if observed is None else observed.shape[1]
        # index_select rather than advanced indexing: the same values, and nothing that would stop a graph
        self.prepared.copy_(likelihood.prepare_noise(noise.index_select(1, plan.ordering)))
        if self.bernoulli:
            self.threshold.copy_(self.prepared[:, :, 0])
        self.params.copy_(plan.out_bias.expand_as(self.params))
        if n_observed:
            self.z[:, :n_observed] = observed
        for layers, out, draw, feed in self.steps:
            for bias, below, weights, h in layers:
                torch.addmm(bias, below, weights, out=h)
                if activation is not None:
                    activation(h)
                else:
                    h.copy_(self.activation(h))
            if out is not None:
                params, h, weights = out
                params.addmm_(h, weights)
            first, end, params, threshold, prepared, z = draw
            if end > n_observed:
                if first < n_observed:  # given up to inside this block: draw only the rest
                    k = n_observed - first
                    params, threshold, prepared, z = (
                        params[:, k * P :],
                        threshold[:, k:],
                        prepared[:, k:],
                        z[:, k:],
                    )
                self._draw(params, threshold, prepared, z)
            if feed is not None:
                params_after, z_first, weights = feed
                params_after.addmm_(z_first, weights)
        return self.z.index_select(1, plan.position)  # back to the dimensions' own order

    def _draw(self, params: torch.Tensor, threshold: torch.Tensor, prepared: torch.Tensor, z: torch.Tensor):
        """z (rows, m) <- draws from params (rows, m*P) with the prepared noise of those m positions."""
        if self.bernoulli:  # logit > logit(u), written straight into the samples as 1.0 / 0.0
            torch.gt(params, threshold, out=z)
        else:  # the head draws row by row: the m positions of every row are m more rows to it
            drawn = self.likelihood.sample_prepared(
                params.reshape(-1, self.P), prepared.reshape(-1, prepared.shape[2])
            )
            z.copy_(drawn.view(z.shape))


@torch.no_grad()
def sample_with_plan(
    model: MADEDensity, plan: _MaskPlan, noise: torch.Tensor, observed: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, D) standardised samples for rows that all use this plan (`_Walk`), over fresh buffers."""
    return _Walk(model, plan, noise.shape[0])(noise, observed)


GRAPH_MAX_ROWS = 1024  # above this the walk is bound by arithmetic, not launches: no graph needed
GRAPH_DEVICES = (
    "cuda",
)  # where walks go through cached fixed-buffer walks (captured as graphs on CUDA only)
_CAPTURE_LOCK = threading.Lock()  # one capture at a time (the loader thread warms up while requests run)


def graph_rows(n: int) -> int:
    """The batch size of the graph that serves n rows: the next power of two, so a handful of graphs per
    mask serve every batch size (a graph's shapes are fixed when it is captured)."""
    return 1 << max(0, n - 1).bit_length()


class GraphedWalk:
    """The walk of one plan over fixed buffers of `rows` rows. Smaller batches are padded with copies of
    their first row (rows never interact, and a real row's noise keeps every value ordinary) and the padding
    is sliced off. With `capture` (CUDA) the walk is recorded once as a CUDA graph and each call replays it:
    the same kernels on the same buffers, so the same samples as the eager walk. Without it the walk runs
    eagerly over the same buffers, which is how the buffer handling is tested where there is no GPU."""

    def __init__(self, model: MADEDensity, plan: _MaskPlan, rows: int, noise_per_dim: int, capture: bool):
        # Normal tensors, not inference tensors, whichever mode the first call came in: the buffers are
        # written in place at every later call, which inference mode would forbid outside it.
        with torch.inference_mode(False), torch.no_grad():
            self._setup(model, plan, rows, noise_per_dim, capture)

    def _setup(
        self, model: MADEDensity, plan: _MaskPlan, rows: int, noise_per_dim: int, capture: bool
    ) -> None:
        self.rows = rows
        # 0.5 is an ordinary draw for every head (uniform or normal noise) while warming up and capturing
        self.noise = torch.full(
            (rows, model.n_dims, noise_per_dim), 0.5, device=model.device, dtype=model.dtype
        )
        walk = _Walk(model, plan, rows)  # buffers made here, outside the capture, and kept by the graph
        self._walk = lambda: walk(self.noise)
        self.graph = None
        self.samples = None
        if capture:
            device = model.device
            with _CAPTURE_LOCK:
                # Warm up on a side stream first (cuBLAS handles and workspaces are created outside the
                # capture), as torch's CUDA graph notes prescribe.
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._walk()
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # thread_local: other threads may keep computing (other models) while this one captures
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.samples = self._walk()
                self.graph = graph

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        n = noise.shape[0]
        if not 0 < n <= self.rows:
            raise ValueError(f"{n} rows for a walk of {self.rows}")
        with torch.inference_mode(False), torch.no_grad():
            return self._run(noise, n)

    def _run(self, noise: torch.Tensor, n: int) -> torch.Tensor:
        self.noise[:n].copy_(noise)
        if n < self.rows:
            self.noise[n:].copy_(noise[:1].expand(self.rows - n, -1, -1))
        if self.graph is None:
            self.samples = self._walk()
        else:
            self.graph.replay()
        return self.samples[:n].clone()  # the graph overwrites its output buffer at the next replay


# Cached CPU walks per mask: the batch sizes seen last. A walk holds about rows x (4D + hidden units) values.
WALKS_PER_PLAN = 8


def walk(model: MADEDensity, plan: _MaskPlan, noise: torch.Tensor, cuda_graphs: bool = True) -> torch.Tensor:
    """`sample_with_plan` for the plan's rows: through a cached CUDA graph where that pays, else through a
    cached walk for this batch size (slicing its buffers afresh would cost about what the walk does)."""
    n = noise.shape[0]
    if cuda_graphs and noise.device.type in GRAPH_DEVICES and 0 < n <= GRAPH_MAX_ROWS:
        rows = graph_rows(n)
        graphed = plan.graphs.get(rows)
        if graphed is None:
            graphed = plan.graphs[rows] = GraphedWalk(
                model, plan, rows, noise.shape[2], capture=noise.device.type == "cuda"
            )
        return graphed(noise)
    cached = plan.walks.pop(n, None) or _Walk(model, plan, n)
    plan.walks[n] = cached  # the most recent last
    while len(plan.walks) > WALKS_PER_PLAN:
        plan.walks.popitem(last=False)
    if not cached.lock.acquire(blocking=False):  # another thread is walking it: use buffers of our own
        return sample_with_plan(model, plan, noise)
    try:
        return cached(noise)
    finally:
        cached.lock.release()


def sample_fast_from_randomness(
    model: Density, randomness: Randomness, cuda_graphs: bool = True
) -> torch.Tensor:
    """(n, D) samples in original units; the same function of the randomness as the reference sampler.
    On CUDA each mask's walk runs as a CUDA graph unless `cuda_graphs` is off."""
    return sample_per_mask(
        model, randomness, lambda k, rows: walk(*_plan(model, k), randomness.noise[rows], cuda_graphs)
    )


def sample_fast(
    model: Density,
    n: int,
    masks: int | None = None,
    generator: torch.Generator | None = None,
    cuda_graphs: bool = True,
) -> torch.Tensor:
    """(n, D) samples from the K-mask ensemble at about one forward pass of cost."""
    return sample_fast_from_randomness(model, draw_randomness(model, n, masks, generator), cuda_graphs)
