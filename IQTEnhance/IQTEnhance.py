"""IQT Enhance: Image Quality Transfer for low-quality MRI in 3D Slicer.

The Slicer classes (Module, ParameterNode, Widget, Logic, Test) only.  The work is done by
``IQTEnhanceLib`` (the engine, no Slicer) and ``IQTEnhanceSlicer`` (MRML glue, background runner,
panel model and dependency checks, tested headless with pytest on slicer-core's MRML scene).
This file runs only inside Slicer: it needs qt, ctk and the Slicer application.
"""
import logging
import os
import traceback
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper, parameterPack
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

    def translate(context, text):
        return text

from IQTEnhanceLib.devices import DEVICES
from IQTEnhanceLib.errors import CancelledError, IQTError
from IQTEnhanceLib.methods import get_method
from IQTEnhanceSlicer import deps, panel, worker
from IQTEnhanceSlicer.logic import EnhanceLogic
from IQTEnhanceSlicer.panel import ProcessingState
from IQTEnhanceSlicer.tasks import BASELINE_METHOD

PAPER = ("A. K. Eldaly, M. Figini, D. C. Alexander, \"Alternative Learning Paradigms for Image Quality Transfer\", "
         "Machine Learning for Biomedical Imaging (MELBA), 2024, arXiv:2411.05885")
POLL_INTERVAL_MS = 100  # progress bar refresh; the worker's own rate limit is 50 ms (IQTEnhanceLib.progress)


#
# IQTEnhance
#
class IQTEnhance(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("IQT Enhance")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["IQTEnhance developers (IQTEnhance open-source project)"]
        self.parent.helpText = _(
            "Image Quality Transfer (IQT) turns a low-quality MRI volume (thick slices, noise, low-field "
            "contrast) into a high-quality one on a grid with thin slices.<br>"
            "<b>Methods</b>: IQT-SRep (coupled sparse dictionaries), IQT-DDL (deep dictionary learning), "
            "IQT-DL (anisotropic U-Net), classic patch regressions and interpolation baselines. "
            "Each learned method uses a model file; small models trained on simulated data ship with the "
            "module, and <code>iqt-enhance train</code> trains your own.<br>"
            "Choose the input, method and device and click <b>Apply</b>: the work runs in the background "
            "(Cancel stops it and leaves the scene unchanged); the result is a new volume named after the "
            "input and the method, shown side by side with the input. <b>Compare</b> runs several methods "
            "and the trilinear baseline on the same input.<br>"
            "From the Python console: <code>logic = slicer.util.getModuleLogic('IQTEnhance'); "
            "out = logic.enhance(inputNode, method='srep')</code>.<br>"
            f"Methods after: {PAPER}."
        )
        # the module's sample (Sample Data module, category "IQT Enhance"), once Slicer has started
        slicer.app.connect("startupCompleted()", registerSampleData)
        self.parent.acknowledgementText = _(
            "The methods follow Eldaly, Figini and Alexander, \"Alternative Learning Paradigms for Image "
            "Quality Transfer\" (MELBA 2024, <a href=\"https://arxiv.org/abs/2411.05885\">arXiv:2411.05885</a>), "
            "and the IQT work of the UCL Centre for Medical Image Computing. Shipped models are trained on the "
            "ICBM 2009 templates (McConnell Brain Imaging Centre); see the model cards for data and licences."
        )


def registerSampleData() -> None:
    """A real thick-slice T1 (Colin27, 4 mm slices) in the Sample Data module: "Download sample" then
    "Apply" works on a fresh install, offline (the file ships with the module)."""
    import SampleData

    from IQTEnhanceSlicer import sample_data

    resources = os.path.join(os.path.dirname(__file__), "Resources")
    sample_data.register(SampleData.SampleDataLogic, resources,
                         thumbnail=os.path.join(resources, "Icons", "IQTEnhance.png"))


#
# IQTEnhanceParameterNode
#
def _optionsPack(method: str):
    """A parameterPack of the method's options (``MethodSpec.options``), or None when it has none.

    Built from the registry so that a method's parameters appear in the panel as soon as it lands.
    """
    fields = panel.option_fields(method)
    if not fields:
        return None
    annotations, namespace = {}, {"__module__": __name__, "__doc__": f"Options of {method}"}
    for f in fields:
        if f.choices:
            annotations[f.field] = Annotated[f.type, Choice(list(f.choices))]
        elif f.minimum is not None:
            annotations[f.field] = Annotated[f.type, WithinRange(f.minimum, f.maximum)]
        else:
            annotations[f.field] = f.type
        namespace[f.field] = f.default
    namespace["__annotations__"] = annotations
    return parameterPack(type(f"IQTEnhance_{panel.field_name(method)}_Options", (), namespace))


def _makeOptionPacks() -> dict:
    packs = {}
    for entry in panel.method_entries():
        try:
            pack = _optionsPack(entry.name)
        except Exception:  # noqa: BLE001 - one odd option must not stop the module from loading
            logging.warning(f"IQTEnhance: the options of {entry.name} cannot be edited in the panel "
                            f"(defaults are used):\n{traceback.format_exc()}")
            continue
        if pack is not None:
            packs[entry.name] = pack
    return packs


OPTION_PACKS = _makeOptionPacks()


def optionsParameterName(method: str) -> str:
    return f"{panel.field_name(method)}Options"


def _makeParameterNodeClass():
    methods = [e.name for e in panel.method_entries()] or ["trilinear"]
    annotations = {
        "inputVolume": vtkMRMLScalarVolumeNode,
        "method": Annotated[str, Choice(methods)],
        "modelPath": str,                          # "" or "auto": the shipped model for the scan (factor, contrast)
        "contrast": Annotated[str, Choice([c for c, _label in panel.CONTRAST_ENTRIES])],
        "device": Annotated[str, Choice(list(DEVICES))],  # not device_entries(): no torch import at start-up
        "outputVolume": vtkMRMLScalarVolumeNode,   # None = create a new volume
        "trustMap": bool,
        "showResult": bool,
        "compareMethods": str,                     # comma-separated method names
    }
    namespace = {"__module__": __name__, "__doc__": "IQTEnhance panel state, saved with the scene.",
                 "method": panel.default_method() if panel.default_method() in methods else methods[0],
                 "modelPath": "", "contrast": "t1", "device": "auto", "trustMap": False, "showResult": True,
                 "compareMethods": ",".join(e.name for e in panel.method_entries()
                                            if e.ready and e.name not in panel.INTERPOLATION_METHODS)}
    for method, pack in OPTION_PACKS.items():
        annotations[optionsParameterName(method)] = pack
    namespace["__annotations__"] = annotations
    return parameterNodeWrapper(type("IQTEnhanceParameterNode", (), namespace))


IQTEnhanceParameterNode = _makeParameterNodeClass()


#
# IQTEnhanceWidget
#
class IQTEnhanceWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel.  Its buttons follow :data:`IQTEnhanceSlicer.panel.STATE_TABLE`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._optionsGuiTag = None
        self._optionWidgets = {}          # method -> (container widget, {parameter name: widget})
        self._updatingGui = False
        self._state = ProcessingState.IDLE
        self._run = None                  # the IQTEnhanceSlicer.logic.AsyncRun in flight
        self._install = None              # the deps.InstallJob in flight
        self._loadedModelPaths = []
        self.lastOutputs = []             # outputs of the last finished run (for the self-test)

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Called when the user opens the module the first time."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IQTEnhance.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IQTEnhanceLogic()

        self._fillMethodComboBox()
        self._fillDeviceComboBox()
        self._fillCompareList()
        self._buildOptionWidgets()
        self.ui.progressBar.setRange(0, 1000)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        for name, label in panel.CONTRAST_ENTRIES:
            self.ui.contrastComboBox.addItem(_(label), name)
        self.ui.contrastComboBox.connect("currentIndexChanged(int)", self.onContrastChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.compareMethodsList.connect("itemChanged(QListWidgetItem*)", self.onCompareListChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)

        self.initializeParameterNode()
        self.setState(ProcessingState.IDLE)
        try:
            # a worker process imports the engine (and torch, if installed) now, in its own process, so
            # that the first Apply starts at once; this process imports no torch for it
            worker.prestart()
        except Exception:  # noqa: BLE001 - an optimisation: Apply starts a worker anyway
            logging.warning("IQTEnhance: could not start the worker process ahead of time:\n" + traceback.format_exc())

    def _fillMethodComboBox(self) -> None:
        combo = self.ui.methodComboBox
        combo.clear()
        for index, entry in enumerate(panel.method_entries()):
            combo.addItem(entry.label, entry.name)
            tip = entry.description + (f"\n({entry.reason})" if entry.reason else "")
            combo.setItemData(index, tip, qt.Qt.ToolTipRole)

    def _fillDeviceComboBox(self) -> None:
        combo = self.ui.deviceComboBox
        combo.clear()
        for index, device in enumerate(panel.device_entries()):
            combo.addItem(device.label, device.name)
            combo.setItemData(index, device.tooltip, qt.Qt.ToolTipRole)
            if not device.enabled:
                # flags role (Qt::UserRole - 1) = 0: the item cannot be chosen; its tooltip says why
                combo.setItemData(index, 0, qt.Qt.UserRole - 1)

    def _fillCompareList(self) -> None:
        widget = self.ui.compareMethodsList
        widget.clear()
        for entry in panel.method_entries():
            if entry.name == BASELINE_METHOD:
                continue  # always included
            item = qt.QListWidgetItem(entry.label)
            item.setData(qt.Qt.UserRole, entry.name)
            item.setToolTip(entry.description + (f"\n({entry.reason})" if entry.reason else ""))
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            widget.addItem(item)

    def _buildOptionWidgets(self) -> None:
        """One form per method with options; only the chosen method's form is visible."""
        container = self.ui.methodOptionsContainer
        layout = qt.QVBoxLayout(container)
        layout.setContentsMargins(0, 0, 0, 0)
        for method in OPTION_PACKS:
            form = qt.QWidget()
            formLayout = qt.QFormLayout(form)
            formLayout.setContentsMargins(0, 0, 0, 0)
            widgets = {}
            for f in panel.option_fields(method):
                if f.type is bool:
                    w = qt.QCheckBox()
                elif f.choices:
                    w = qt.QComboBox()
                elif f.type is int:
                    w = qt.QSpinBox()
                elif f.type is float:
                    w = qt.QDoubleSpinBox()
                    w.decimals = f.decimals  # before the value is set, so 1e-5 is not rounded to 0
                    w.singleStep = f.step
                else:
                    w = qt.QLineEdit()
                w.toolTip = f.help
                formLayout.addRow(f"{f.label}:", w)
                widgets[f"{optionsParameterName(method)}.{f.field}"] = w
            layout.addWidget(form)
            form.visible = False
            self._optionWidgets[method] = (form, widgets)

    # -- module enter / exit / scene ------------------------------------------------------------
    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._run is not None:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._run.cancel()  # its result must not land in the next scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._restoreChoices()

    def _restoreChoices(self) -> None:
        """The method, device and options of the last Apply (QSettings, across Slicer restarts)."""
        choices = panel.remembered_choices(qt.QSettings().value(panel.SETTINGS_KEY, ""))
        p = self._parameterNode
        with slicer.util.NodeModify(p):
            if "method" in choices:
                p.method = choices["method"]
            if "device" in choices:
                p.device = choices["device"]
            if choices.get("options") and choices["method"] in OPTION_PACKS:
                pack = getattr(p, optionsParameterName(choices["method"]))
                fields = {f.option: f.field for f in panel.option_fields(choices["method"])}
                for name, value in choices["options"].items():
                    if name in fields:
                        setattr(pack, fields[name], value)

    def _rememberChoices(self, method: str, device: str, options: dict) -> None:
        qt.QSettings().setValue(panel.SETTINGS_KEY, panel.settings_text(method, device, options))

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self._optionsGuiTag is not None:
                self._parameterNode.disconnectGui(self._optionsGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNodeGuiTag = self._optionsGuiTag = None

    def setParameterNode(self, inputParameterNode: Optional[IQTEnhanceParameterNode]) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with a "SlicerParameterName" property in the .ui: input, output, trust map, show result
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            mapping = {}
            for _form, widgets in self._optionWidgets.values():
                mapping.update(widgets)
            self._optionsGuiTag = self._parameterNode.connectParametersToGui(mapping) if mapping else None
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    # -- parameter node -> GUI -----------------------------------------------------------------
    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            p = self._parameterNode
            method = p.method
            self._selectByData(self.ui.methodComboBox, method)
            self._selectByData(self.ui.deviceComboBox, p.device)
            hasModels = self._fillModelComboBox(method, p.modelPath)
            self._selectByData(self.ui.contrastComboBox, p.contrast)
            automatic = hasModels and p.modelPath in ("", panel.AUTO_MODEL)
            self.ui.contrastLabel.visible = self.ui.contrastComboBox.visible = automatic
            for name, (form, _widgets) in self._optionWidgets.items():
                form.visible = name == method
            self.ui.noOptionsLabel.visible = method not in self._optionWidgets
            entry = self._entry(method)
            self.ui.trustMapCheckBox.visible = bool(entry and entry.extras)
            if p.inputVolume:
                self.ui.outputVolumeSelector.baseName = f"{p.inputVolume.GetName()} {entry.label if entry else method}"
            checked = set(filter(None, p.compareMethods.split(",")))
            for row in range(self.ui.compareMethodsList.count):
                item = self.ui.compareMethodsList.item(row)
                item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in checked else qt.Qt.Unchecked)
            self._updateButtons()
        finally:
            self._updatingGui = False

    def _entry(self, method):
        return next((e for e in panel.method_entries() if e.name == method), None)

    @staticmethod
    def _selectByData(combo, value) -> None:
        index = combo.findData(value)
        if index >= 0 and combo.currentIndex != index:
            combo.currentIndex = index

    def _fillModelComboBox(self, method: str, modelPath: str) -> bool:
        """Fill the Model list for ``method``; False (and hidden) when the method takes no model."""
        combo = self.ui.modelComboBox
        # the parameter node's path too: after a module reload or a scene load it is not in the session list
        entries = panel.model_entries(method, self._loadedModelPaths + ([modelPath] if modelPath else []))
        self.ui.modelLabel.visible = combo.visible = bool(entries)
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for index, entry in enumerate(entries):
                combo.addItem(entry.label, entry.path)
                combo.setItemData(index, entry.tooltip, qt.Qt.ToolTipRole)
            index = combo.findData(modelPath) if modelPath else next(
                (i for i, e in enumerate(entries) if e.default), 0)
            combo.currentIndex = max(index, 0)
        finally:
            combo.blockSignals(wasBlocked)
        return bool(entries)

    def _updateButtons(self) -> None:
        view = panel.STATE_TABLE[self._state]
        self.ui.applyButton.text = _(view.apply_text)
        problems = []
        if self._parameterNode is not None and view.apply_enabled is None:
            p = self._parameterNode
            problems = panel.input_problems(p.inputVolume, p.method, p.modelPath, p.device)
        self.ui.applyButton.enabled = (not problems) if view.apply_enabled is None else view.apply_enabled
        self.ui.applyButton.toolTip = "\n".join(problems) if problems else _(view.apply_tooltip)
        for w in (self.ui.inputsCollapsibleButton, self.ui.parametersCollapsibleButton,
                  self.ui.outputsCollapsibleButton):
            w.enabled = view.inputs_enabled
        self.ui.compareButton.enabled = view.inputs_enabled and bool(self._parameterNode and
                                                                     self._parameterNode.inputVolume)
        self.ui.progressBar.visible = view.progress_visible

    # -- GUI -> parameter node (the widgets not bound through SlicerParameterName) ----------------
    def onMethodChanged(self, index) -> None:
        if self._parameterNode is None or self._updatingGui or index < 0:
            return
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.method = self.ui.methodComboBox.itemData(index)
            self._parameterNode.modelPath = ""

    def onContrastChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui and index >= 0:
            self._parameterNode.contrast = self.ui.contrastComboBox.itemData(index)

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onModelActivated(self, index) -> None:
        if self._parameterNode is None or index < 0:
            return
        path = self.ui.modelComboBox.itemData(index)
        if not path:  # "Load model file…"
            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load IQTEnhance model"), "",
                                                  _("IQTEnhance models (*.iqtm);;All files (*)"))
            if not path:
                self.updateGUIFromParameterNode()
                return
            if path not in self._loadedModelPaths:
                self._loadedModelPaths.append(path)
        self._parameterNode.modelPath = path
        self.updateGUIFromParameterNode()

    def onCompareListChanged(self, item) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        names = [self.ui.compareMethodsList.item(r).data(qt.Qt.UserRole)
                 for r in range(self.ui.compareMethodsList.count)
                 if self.ui.compareMethodsList.item(r).checkState() == qt.Qt.Checked]
        self._parameterNode.compareMethods = ",".join(names)

    # -- processing state ----------------------------------------------------------------------
    def setState(self, state: ProcessingState, update=None) -> None:
        self._state = ProcessingState(state)
        self.ui.progressBar.setFormat(panel.progress_text(self._state, update))
        if update is not None:
            self.ui.progressBar.value = int(1000 * update.fraction)
        elif self._state in (ProcessingState.STARTING, ProcessingState.IDLE):
            self.ui.progressBar.value = 0
        elif self._state is ProcessingState.COMPLETED:
            self.ui.progressBar.value = 1000
        self._updateButtons()

    def addLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(f"IQTEnhance: {text}")

    # -- actions ---------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._state is ProcessingState.INSTALLING:
            self.addLog(_("Cancelling the installation…"))
            self._install.cancel()
            return
        if self._state is ProcessingState.RUNNING:
            self.setState(ProcessingState.CANCELLING, self._run.last_update if self._run else None)
            self.addLog(_("Cancelling…"))
            self._run.cancel()
            return
        p = self._parameterNode
        options = {}
        if p.method in OPTION_PACKS:
            pack = getattr(p, optionsParameterName(p.method))
            values = {f.field: getattr(pack, f.field) for f in panel.option_fields(p.method)}
            options = panel.options_from_fields(p.method, values)
        self._rememberChoices(p.method, p.device, options)
        self._start(lambda **callbacks: self.logic.enhanceAsync(
            p.inputVolume, method=p.method, model=p.modelPath or None, device=p.device, outputNode=p.outputVolume,
            trustMap=p.trustMap and bool(self._entry(p.method).extras), contrast=p.contrast, **callbacks, **options),
            _("Enhancing '{name}' with {label}").format(name=p.inputVolume.GetName(),
                                                         label=self._entry(p.method).label), [p.method])

    def onCompareButton(self) -> None:
        p = self._parameterNode
        methods = [m for m in p.compareMethods.split(",") if m]
        self._start(lambda **callbacks: self.logic.compareAsync(p.inputVolume, methods, device=p.device, **callbacks),
                    _("Comparing {methods} on '{name}'").format(methods=", ".join([BASELINE_METHOD] + methods),
                                                                  name=p.inputVolume.GetName()),
                    methods + [BASELINE_METHOD])

    def _start(self, starter, message: str, methods) -> None:
        """Apply/Compare: install missing packages first (after the user confirms, in a pip process
        with progress and Cancel), then start the run."""
        self.setState(ProcessingState.STARTING)
        self.addLog(message)
        try:
            needsTorch = any(get_method(m).needs_torch for m in methods)
            missing = deps.missing_packages(needsTorch)
            self._install = deps.start_install(
                missing, lambda title, text: slicer.util.confirmOkCancelDisplay(text, title))
        except (IQTError, deps.DependencyError) as exc:
            self._onError(str(exc), traceback.format_exc())
            return
        if self._install is None:
            self._launch(starter)
            return
        self.addLog(_("Installing {packages}…").format(packages=", ".join(self._install.requirements)))
        self.setState(ProcessingState.INSTALLING)
        modules = [m.module for m in missing]
        timer = qt.QTimer(self.parent)   # parented: released with the panel even if never stopped
        timer.setInterval(POLL_INTERVAL_MS)

        def poll():
            line = self._install.poll()
            if line:
                self.ui.progressBar.setFormat(line[:120])
            if not self._install.finished:
                return
            timer.stop()
            timer.disconnect("timeout()", poll)
            timer.deleteLater()
            job, self._install = self._install, None
            try:
                deps.finish_install(job, modules)
            except deps.DependencyError as exc:
                if job.cancelled:
                    self.setState(ProcessingState.CANCELLED)
                    self.addLog(_("Installation cancelled; nothing was changed by IQTEnhance."))
                else:
                    self._onError(str(exc), job.output() if hasattr(job, "output") else "")
                return
            self.addLog(_("Installed {packages}.").format(packages=", ".join(job.requirements)))
            self._fillDeviceComboBox()   # the GPU item may have become available
            self._launch(starter)

        timer.connect("timeout()", poll)
        timer.start()

    def _launch(self, starter) -> None:
        try:
            with slicer.util.WaitCursor():
                self._run = starter(onProgress=self._onProgress, onFinished=self._onFinished,
                                    onError=self._onError, onCancelled=self._onCancelled)
        except (IQTError, deps.DependencyError) as exc:
            self._onError(str(exc), traceback.format_exc())
            return
        except Exception as exc:  # noqa: BLE001 - a bug: still show it, with its traceback
            self._onError(f"{type(exc).__name__}: {exc}", traceback.format_exc())
            return
        self.setState(ProcessingState.RUNNING)

    def _onProgress(self, update) -> None:
        if self._state is ProcessingState.RUNNING or self._state is ProcessingState.CANCELLING:
            self.setState(self._state, update)

    def _onFinished(self, outputs) -> None:
        self._run = None
        self.lastOutputs = outputs
        self.setState(ProcessingState.COMPLETED)
        for o in outputs:
            self.addLog(_("Created '{name}' ({method}, ×{factor}, {device}, {seconds:.1f} s)").format(
                name=o.node.GetName(), method=o.info.get("label"), factor=o.info.get("factor"),
                device=o.info.get("device"), seconds=o.info.get("seconds", 0.0)))
            for note in o.info.get("warnings", []):
                self.addLog(_("Warning: {note}").format(note=note))
        if self._parameterNode is not None and self._parameterNode.showResult and outputs:
            self.logic.showResults(self._parameterNode.inputVolume, [o.node for o in outputs])

    def _onError(self, message: str, details: str) -> None:
        self._run = None
        self.setState(ProcessingState.FAILED)
        self.addLog(_("Failed: {message}").format(message=message))
        logText = self.ui.logTextEdit.toPlainText()
        slicer.util.errorDisplay(_("IQT enhancement failed: {message}").format(message=message),
                                 detailedText=f"{details}\n\nPanel log:\n{logText}")

    def _onCancelled(self) -> None:
        self._run = None
        self.setState(ProcessingState.CANCELLED)
        self.addLog(_("Cancelled; the scene is unchanged."))


#
# IQTEnhanceLogic
#
class IQTEnhanceLogic(ScriptedLoadableModuleLogic):
    """Enhancement usable without the panel, e.g. from the Python console::

        logic = slicer.util.getModuleLogic("IQTEnhance")
        out = logic.enhance(slicer.util.getNode("T1"), method="srep")          # blocks, returns the node
        handle = logic.enhanceAsync(node, "srep", onFinished=print)              # returns at once
        nodes = logic.compare(node, ["srep", "ddl"])                            # + trilinear baseline

    All methods are called on the main thread; MRML nodes are created only there.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.pytorchUtils = None
        self.confirmInstall = True   # set False in unattended batch scripts only if packages are installed

    def getParameterNode(self):
        return IQTEnhanceParameterNode(super().getParameterNode())

    def _core(self) -> EnhanceLogic:
        return EnhanceLogic(slicer.mrmlScene)

    # -- dependencies ---------------------------------------------------------------------------
    def ensureDependencies(self, methods) -> None:
        """torch (when a method needs it) and scipy: checked, installed after the user confirms."""
        needsTorch = any(get_method(m).needs_torch for m in methods)
        if not deps.missing_packages(needsTorch):
            return
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        deps.ensure_packages(needsTorch, lambda title, text: slicer.util.confirmOkCancelDisplay(text, title),
                             deps.slicer_pip_install, PyTorchUtils)

    # -- blocking ---------------------------------------------------------------------------------
    def enhance(self, inputNode, method: str = "srep", model=None, device: str = "auto", outputNode=None,
                trustMap: bool = False, showResult: bool = False, progress=None, cancel=None, contrast: str = "t1",
                **options):
        """Enhance ``inputNode`` and return the new (or given ``outputNode``) volume node.  Blocking.

        ``model``: None or "auto" (the shipped model of ``contrast``, "t1" or "t2", whose factor matches
        the scan's spacing), a file path, or "self" (learned from the scan); ``device``: "auto", "cpu" or "cuda";
        ``options``: the method's parameters (names as in ``IQTEnhanceLib.methods``);
        ``progress(fraction, message)`` and ``cancel() -> bool`` as in the engine (a cancel raises
        ``CancelledError`` and adds no node).
        Raises ``IQTEnhanceLib.errors.InputError`` / ``ModelError`` with a clear message on bad input.
        """
        self.ensureDependencies([method])
        outputs = self._core().enhance_outputs(inputNode, method, model, device, outputNode, extras=trustMap,
                                               progress=progress, cancel=cancel, contrast=contrast, **options)
        if showResult:
            self.showResults(inputNode, [o.node for o in outputs])
        return outputs[0].node

    def compare(self, inputNode, methods, device: str = "auto", showResult: bool = False, progress=None,
                cancel=None):
        """Run ``methods`` and the trilinear baseline on ``inputNode``; returns the nodes. Blocking."""
        self.ensureDependencies(list(methods) + [BASELINE_METHOD])
        nodes = self._core().compare(inputNode, methods, device=device, progress=progress, cancel=cancel)
        if showResult:
            self.showResults(inputNode, nodes)
        return nodes

    # -- non-blocking -------------------------------------------------------------------------------
    def enhanceAsync(self, inputNode, method: str = "srep", model=None, device: str = "auto", outputNode=None,
                     trustMap: bool = False, onProgress=None, onFinished=None, onError=None, onCancelled=None,
                     contrast: str = "t1", **options):
        """Start in a worker process and return at once; a QTimer polls it on the main thread.

        ``onProgress(update)`` (update.fraction, .message, .remaining seconds), ``onFinished(outputs)``
        (``outputs[i].node``, ``.extra_nodes``, ``.info``), ``onError(message, details)``,
        ``onCancelled()`` are called on the main thread.  ``handle.cancel()`` ends the worker at once
        and leaves the scene unchanged.  Input errors raise here, before any thread starts.
        """
        self.ensureDependencies([method])
        run = self._core().start_enhance(inputNode, method, model, device, outputNode, extras=trustMap,
                                         on_progress=onProgress, on_finished=onFinished, on_error=onError,
                                         on_cancelled=onCancelled, contrast=contrast, **options)
        return run.drive(self._pollTimer())

    def compareAsync(self, inputNode, methods, device: str = "auto", onProgress=None, onFinished=None,
                     onError=None, onCancelled=None):
        self.ensureDependencies(list(methods) + [BASELINE_METHOD])
        run = self._core().start_compare(inputNode, methods, device=device, on_progress=onProgress,
                                         on_finished=onFinished, on_error=onError, on_cancelled=onCancelled)
        return run.drive(self._pollTimer())

    @staticmethod
    def _pollTimer():
        """The QTimer that pumps a run on the main thread (released by the run when it ends)."""
        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)
        return timer

    # -- display ----------------------------------------------------------------------------------
    @staticmethod
    def _throughPlaneOrientation(volumeNode) -> str:
        """The slice orientation that cuts across the thick slices, where IQT's gain shows: coronal for
        axial slices, axial for sagittal ones, sagittal for coronal ones."""
        import numpy as np

        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        axes = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
        thick = int(np.argmax(np.linalg.norm(axes, axis=0)))
        dominant = int(np.argmax(np.abs(axes[:, thick])))  # 0 R-L, 1 A-P, 2 S-I
        return {0: "Axial", 1: "Sagittal", 2: "Coronal"}[dominant]

    def showResults(self, inputNode, resultNodes) -> None:
        """Input | result side by side (or a grid for a comparison) in linked slice views."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or inputNode is None or not resultNodes:
            return
        nodes = [inputNode] + list(resultNodes)
        orientation = self._throughPlaneOrientation(inputNode)
        viewNames = self._setCompareLayout(len(nodes), orientation)
        for viewName, node in zip(viewNames, nodes):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
            sliceNode = sliceWidget.mrmlSliceNode()
            sliceNode.SetOrientation(orientation)
            sliceWidget.sliceLogic().FitSliceToAll()
        slicer.util.resetSliceViews()

    @staticmethod
    def _setCompareLayout(count: int, orientation: str) -> list:
        """A layout of ``count`` slice views (1 row up to 3, then rows of 3); returns the view names."""
        columns = count if count <= 3 else 3
        rows = (count + columns - 1) // columns
        names = [f"IQT{i + 1}" for i in range(count)]
        colors = ["#F34A33", "#EDD54C", "#6EB04B", "#4A90D9", "#B068C8", "#E08D3C", "#7F7F7F", "#35B0AB", "#C0C0C0"]
        xml = '<layout type="vertical">'
        for r in range(rows):
            xml += '<item><layout type="horizontal">'
            for c in range(columns):
                i = r * columns + c
                if i >= count:
                    break
                xml += (f'<item><view class="vtkMRMLSliceNode" singletontag="{names[i]}">'
                        f'<property name="orientation" action="default">{orientation}</property>'
                        f'<property name="viewlabel" action="default">{i + 1}</property>'
                        f'<property name="viewcolor" action="default">{colors[i % len(colors)]}</property>'
                        '</view></item>')
            xml += "</layout></item>"
        xml += "</layout>"
        layoutId = 74200 + count  # custom layout ids, one per view count
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        if not layoutNode.SetLayoutDescription(layoutId, xml):
            layoutNode.AddLayoutDescription(layoutId, xml)
        slicer.app.layoutManager().setLayout(layoutId)
        return names


#
# IQTEnhanceTest
#
class IQTEnhanceTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: every method through the Logic (blocking and background) and through
    the panel's Apply button; checks geometry and that the result differs from the input."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicEveryMethod()
        self.setUp()
        self.test_BackgroundCancelLeavesScene()
        self.setUp()
        self.test_WidgetApply()

    # -- helpers ---------------------------------------------------------------------------------
    def _loadInput(self):
        """The Colin27 fixture (Testing/Data, beside the module in a source checkout) reduced to
        4 mm slices; a synthetic head phantom when the module runs from an installed extension."""
        import numpy as np

        from IQTEnhanceLib.volume import Volume
        from IQTEnhanceSlicer import mrml

        fixture = os.path.join(os.path.dirname(__file__), "..", "Testing", "Data", "colin27_t1.nii.gz")
        if os.path.exists(fixture):
            from IQTEnhanceLib.volume import read_volume

            hq = read_volume(fixture)
            array = hq.array.astype(np.float32)
            m = array.shape[0] // 4
            lq = array[: m * 4].reshape((m, 4) + array.shape[1:]).mean(axis=1)
            spacing = hq.spacing * [1, 1, 4]
            volume = Volume(lq, spacing, hq.origin + hq.direction[:, 2] * hq.spacing[2] * 1.5, hq.direction)
        else:
            self.delayDisplay("Colin27 fixture not found (installed extension): using a synthetic phantom")
            k, j, i = np.mgrid[0:12, 0:64, 0:56].astype(np.float32)
            r = np.sqrt(((i - 28) / 24) ** 2 + ((j - 32) / 28) ** 2 + ((k * 4 - 24) / 22) ** 2)
            lq = np.where(r < 1, 400 + 300 * np.cos(6 * r) ** 2, 0).astype(np.float32)
            volume = Volume(lq, [1.0, 1.0, 4.0])
        node = mrml.create_volume_node(slicer.mrmlScene, volume, "IQTEnhanceTestInput")
        node.GetDisplayNode().SetAutoWindowLevel(False)
        node.GetDisplayNode().SetWindowLevel(700, 350)
        return node

    def _checkOutput(self, inputNode, outputNode):
        import numpy as np

        self.assertIsNotNone(outputNode)
        inSpacing, outSpacing = np.array(inputNode.GetSpacing()), np.array(outputNode.GetSpacing())
        factor = int(round(inSpacing[2] / outSpacing[2]))
        self.assertGreaterEqual(factor, 2)
        np.testing.assert_allclose(outSpacing[:2], inSpacing[:2], atol=1e-6)
        inDims, outDims = inputNode.GetImageData().GetDimensions(), outputNode.GetImageData().GetDimensions()
        self.assertEqual(tuple(outDims), (inDims[0], inDims[1], inDims[2] * factor))
        inBounds, outBounds = [0.0] * 6, [0.0] * 6
        inputNode.GetRASBounds(inBounds)
        outputNode.GetRASBounds(outBounds)
        # same physical extent up to half a voxel of each grid (bounds run between voxel centres)
        np.testing.assert_allclose(outBounds, inBounds, atol=inSpacing.max() / 2 + 1e-6)
        inDir, outDir = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputNode.GetIJKToRASDirectionMatrix(inDir)
        outputNode.GetIJKToRASDirectionMatrix(outDir)
        for r in range(3):
            for c in range(3):
                self.assertAlmostEqual(inDir.GetElement(r, c), outDir.GetElement(r, c), places=9)
        result = slicer.util.arrayFromVolume(outputNode)
        self.assertTrue(np.isfinite(result).all())
        nearest = np.repeat(slicer.util.arrayFromVolume(inputNode).astype(np.float32), factor, axis=0)
        self.assertFalse(np.allclose(result, nearest), "the result differs from the input's slices")
        self.assertEqual(outputNode.GetDisplayNode().GetWindow(), inputNode.GetDisplayNode().GetWindow())

    def _waitThroughEventLoop(self, condition, timeoutSeconds: float = 900.0) -> None:
        """Wait in Qt's own event loop, as Slicer runs for a user (C++ holding the GIL between timer
        callbacks), not in a Python loop calling processEvents, which would hand the GIL around."""
        loop = qt.QEventLoop()
        check = qt.QTimer()
        check.setInterval(50)
        check.connect("timeout()", lambda: loop.quit() if condition() else None)
        deadline = qt.QTimer()
        deadline.setSingleShot(True)
        deadline.connect("timeout()", loop.quit)
        check.start()
        deadline.start(int(timeoutSeconds * 1000))
        if not condition():
            loop.exec_()
        check.stop()
        deadline.stop()
        self.assertTrue(condition(), f"still waiting after {timeoutSeconds:.0f} s")

    def _runnableMethods(self):
        return [e.name for e in panel.method_entries() if e.ready and e.name != "nearest"]

    # -- tests ------------------------------------------------------------------------------------
    def test_LogicEveryMethod(self):
        self.delayDisplay("Logic: every method, blocking and in the background")
        import numpy as np

        logic = IQTEnhanceLogic()
        inputNode = self._loadInput()
        before = slicer.util.arrayFromVolume(inputNode).copy()
        for method in self._runnableMethods():
            self.delayDisplay(f"  {method} (blocking)")
            out = logic.enhance(inputNode, method=method, device="auto")
            self._checkOutput(inputNode, out)
            self.delayDisplay(f"  {method} (background)")
            handle = logic.enhanceAsync(inputNode, method=method)
            self._waitThroughEventLoop(lambda: handle.done)  # the GUI keeps running while the worker computes
            self.assertEqual(handle.state.value, "done")
            self._checkOutput(inputNode, handle.outputs[0].node)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), before)
        nodes = logic.compare(inputNode, [m for m in self._runnableMethods() if m != BASELINE_METHOD][:2],
                              showResult=True)
        for node in nodes:
            self._checkOutput(inputNode, node)
        self.delayDisplay("Logic test passed")

    def test_BackgroundCancelLeavesScene(self):
        self.delayDisplay("Cancel leaves the scene unchanged")
        logic = IQTEnhanceLogic()
        inputNode = self._loadInput()
        count = slicer.mrmlScene.GetNumberOfNodes()
        cancelled = []
        handle = logic.enhanceAsync(inputNode, method="bspline", onCancelled=lambda: cancelled.append(True))
        handle.cancel()
        self._waitThroughEventLoop(lambda: handle.done)
        self.assertEqual(cancelled, [True])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        with self.assertRaises(CancelledError):
            logic.enhance(inputNode, method="trilinear", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Cancel test passed")

    def test_WidgetApply(self):
        self.delayDisplay("Panel: Apply for every method")
        inputNode = self._loadInput()
        slicer.util.selectModule("IQTEnhance")
        widget = slicer.util.getModuleWidget("IQTEnhance")
        parameterNode = widget._parameterNode
        parameterNode.inputVolume = inputNode
        parameterNode.outputVolume = None
        for method in self._runnableMethods():
            self.delayDisplay(f"  Apply {method}")
            parameterNode.method = method
            parameterNode.modelPath = ""
            # the contrast choice shows with the automatic model choice, for methods with models only
            self.assertEqual(widget.ui.contrastComboBox.isVisibleTo(widget.parent),
                             widget.ui.modelComboBox.isVisibleTo(widget.parent))
            parameterNode.contrast = "t1"
            self.assertTrue(widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip)
            widget.ui.applyButton.click()
            self.assertEqual(widget.ui.applyButton.text, "Cancel")
            self._waitThroughEventLoop(
                lambda: widget._state in (ProcessingState.COMPLETED, ProcessingState.FAILED))
            self.assertEqual(widget._state, ProcessingState.COMPLETED, widget.ui.logTextEdit.toPlainText())
            self.assertEqual(widget.ui.applyButton.text, "Apply")
            self._checkOutput(inputNode, widget.lastOutputs[0].node)
        self.delayDisplay("Panel test passed")
