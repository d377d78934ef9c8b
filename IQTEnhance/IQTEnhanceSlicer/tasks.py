"""Enhancement of a volume node in three steps, split by thread.

1. :class:`EnhanceTask` (constructor, **main thread**): check the node and the requests, copy the
   voxels and geometry out of the scene.  Every misuse fails here, before any work starts, with one
   clear :class:`~IQTEnhanceLib.errors.InputError` / :class:`~IQTEnhanceLib.errors.ModelError`.
2. :meth:`EnhanceTask.run` (**any thread**, usually a :class:`~.runner.BackgroundJob` worker): the
   engine only (:func:`IQTEnhanceLib.api.enhance` per request); never touches a node.
3. :meth:`EnhanceTask.finish` (**main thread**): create (or update) the output nodes.  All or
   nothing: if one node cannot be made, the nodes made before it are removed again.

A cancelled or failed run never reaches step 3, so it leaves the scene exactly as it was.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Optional

from IQTEnhanceLib import api
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.methods import get_method
from IQTEnhanceLib.progress import Reporter, as_reporter
from IQTEnhanceLib.volume import Volume

from . import mrml

BASELINE_METHOD = "trilinear"   # the interpolation every comparison includes


@dataclasses.dataclass
class EnhanceRequest:
    """One engine call: a method with its model, device and options.

    ``model``: None (the method's shipped default), a path, or a :class:`ModelFile`.
    ``extras``: also make the method's extra maps (e.g. the SRep trust map) as volume nodes.
    ``contrast``: the scan's contrast (t1, t2; None: t1) for the automatic model choice.
    """

    method: str
    model: object = None
    device: str = "auto"
    options: dict = dataclasses.field(default_factory=dict)
    factor: Optional[int] = None
    axis: Optional[str] = None
    extras: bool = False
    contrast: Optional[str] = None

    def validate(self, volume: Volume, source: str = "input") -> None:
        """Fail fast, on the main thread, for what the engine would reject only later: the engine's
        own preflight (:func:`IQTEnhanceLib.api.plan`: options, model, factor and axis, memory).
        The GPU is probed only when torch is imported already (importing it takes seconds on the
        GUI thread); otherwise the worker process probes it."""
        spec = get_method(self.method)
        if self.extras and not spec.extras:
            raise InputError(f"method {self.method} makes no extra maps (such as a trust map)")
        planned = api.plan(volume, self.method, model=self.model, factor=self.factor, axis=self.axis,
                           device=self.device, options=self.engine_options(spec), probe_device="torch" in sys.modules,
                           source=source, contrast=self.contrast)
        # the model is loaded once, here; the thread backend uses the loaded file, the worker its path
        # ("self": learned from the scan in the worker)
        self.model = "self" if planned.learn_from_scan else planned.model
        self.options = {k: v for k, v in planned.options.items() if k in self.options}

    def engine_options(self, spec=None) -> dict:
        """Options passed to the engine.  Asking for extras switches on the method's boolean options
        named after them (e.g. ``trust`` / ``make_trust`` / ``trust_map``), if it has any."""
        options = dict(self.options)
        if self.extras:
            for name in (spec or get_method(self.method)).extra_switches().values():
                options.setdefault(name, True)
        return options


@dataclasses.dataclass
class EnhanceOutput:
    node: object                     # the enhanced volume node
    extra_nodes: dict                # extra map name -> volume node
    info: dict                       # engine info: method, label, factor, axis, device, model, seconds, ...
    request: EnhanceRequest


def check_enhanceable(volume: Volume, source: str = "input") -> None:
    """A volume with a single voxel along an axis is a 2-D image: nothing lies between its slices,
    and no patch-based model fits it.  (The values are checked by the engine's plan.)"""
    thin = [("i", "j", "k")[a] for a in range(3) if volume.size_ijk[a] < 2]
    if thin:
        raise InputError(
            f"{source} is too small: {volume.size_ijk[0]}x{volume.size_ijk[1]}x{volume.size_ijk[2]} voxels, "
            f"a single voxel along {', '.join(thin)}; IQT needs a 3-D volume with at least 2 slices along each axis"
        )


class EnhanceTask:
    """Enhance ``input_node`` with each request (one for Apply, several for Compare)."""

    def __init__(self, scene, input_node, requests, output_node=None):
        if isinstance(requests, EnhanceRequest):
            requests = [requests]
        requests = list(requests)
        if not requests:
            raise InputError("no method chosen")
        self.scene = scene
        self.input_node = input_node
        self.requests = requests
        self.input_name = input_node.GetName() if input_node is not None else ""
        source = mrml.describe_node(input_node)
        self.input_volume = mrml.volume_from_node(input_node)  # checks the node; copies the voxels
        check_enhanceable(self.input_volume, source)
        for request in requests:
            request.validate(self.input_volume, source)
        if output_node is not None:
            if len(requests) != 1:
                raise InputError("an output volume can be given for one method only; Compare makes new volumes")
            if output_node is input_node or output_node.GetID() == input_node.GetID():
                raise InputError("the output volume must differ from the input volume (the input is never modified)")
            if not output_node.IsA("vtkMRMLScalarVolumeNode") or output_node.IsA("vtkMRMLLabelMapVolumeNode") \
                    or output_node.IsA("vtkMRMLVectorVolumeNode"):
                raise InputError(f"output '{output_node.GetName()}' is a {output_node.GetClassName()}, "
                                 "not a scalar volume")
        self.output_node = output_node

    # -- worker thread or process ------------------------------------------------------------------
    def run(self, progress=None, cancel=None) -> list:
        """The engine work: a list of :class:`~IQTEnhanceLib.api.EnhanceResult`, one per request."""
        return run_requests(self.input_volume, self.requests, progress, cancel)

    # -- main thread ----------------------------------------------------------------------------
    def finish(self, results) -> list:
        """Make the output nodes (main thread).  Returns a list of :class:`EnhanceOutput`."""
        if len(results) != len(self.requests):
            raise RuntimeError(f"expected {len(self.requests)} results, got {len(results)}")
        like = self.input_node if mrml.node_in_scene(self.scene, self.input_node) else None
        created = []
        outputs = []
        try:
            for request, result in zip(self.requests, results):
                info = dict(result.info)
                name = mrml.output_name(self.input_name, info.get("label", request.method), info["factor"])
                target = self.output_node if mrml.node_in_scene(self.scene, self.output_node) else None
                node = mrml.create_volume_node(self.scene, result.volume, name, like=like, node=target)
                if target is None:
                    created.append(node)
                _record_provenance(node, self.input_name, info)
                extra_nodes = {}
                if request.extras:
                    for extra_name, extra_volume in result.extras.items():
                        extra = mrml.create_volume_node(
                            self.scene, extra_volume, f"{name} {extra_name}", like=None,
                            color_node_id="vtkMRMLColorTableNodeFileViridis.txt")
                        created.append(extra)
                        _record_provenance(extra, self.input_name, dict(info, map=extra_name))
                        extra_nodes[extra_name] = extra
                outputs.append(EnhanceOutput(node, extra_nodes, info, request))
        except Exception:
            for node in reversed(created):
                mrml.remove_node(self.scene, node)
            raise
        return outputs


def run_requests(volume: Volume, requests: list, progress=None, cancel=None) -> list:
    """The engine work of a task, in any thread or in the worker process: one
    :class:`~IQTEnhanceLib.api.EnhanceResult` per request, progress over the whole list."""
    n = len(requests)
    prefix = [""]
    if n > 1 and callable(progress) and not isinstance(progress, Reporter):
        # a comparison: say which method the engine's messages ("enhanced 300/900 patches") are about
        user_progress = progress

        def progress(fraction, message):
            text = message if message.startswith(prefix[0]) else f"{prefix[0]}{message}"
            user_progress(fraction, text)

    reporter = as_reporter(progress, cancel, stage="IQTEnhance")
    results = []
    for index, request in enumerate(requests):
        label = get_method(request.method).label
        stage = label if n == 1 else f"[{index + 1}/{n}] {label}"
        prefix[0] = f"{stage}: " if n > 1 else ""
        sub = reporter.sub(index / n, (index + 1) / n, stage)
        sub(0.0, f"{stage}: starting", force=True)
        results.append(api.enhance(volume, request.method, model=request.model, factor=request.factor,
                                   axis=request.axis, device=request.device, progress=sub,
                                   **request.engine_options()))
    reporter(1.0, "done", force=True)
    return results


def _record_provenance(node, input_name: str, info: dict) -> None:
    """How the node was made, as node attributes (saved with the scene)."""
    node.SetAttribute("IQTEnhance.input", input_name or "")
    node.SetAttribute("IQTEnhance.method", str(info.get("method", "")))
    node.SetAttribute("IQTEnhance.model", str(info.get("model") or ""))
    node.SetAttribute("IQTEnhance.info", json.dumps(info, default=str, sort_keys=True))


def compare_requests(methods, *, device: str = "auto", models: Optional[dict] = None,
                     options: Optional[dict] = None, baseline: str = BASELINE_METHOD) -> list:
    """Requests for a comparison: each method in ``methods`` plus the interpolation ``baseline``
    (first, so the grid reads baseline | methods), each method once."""
    models = models or {}
    options = options or {}
    names = []
    for name in ([baseline] if baseline else []) + list(methods):
        if name not in names:
            names.append(name)
    return [EnhanceRequest(name, model=models.get(name), device=device, options=dict(options.get(name, {})))
            for name in names]
