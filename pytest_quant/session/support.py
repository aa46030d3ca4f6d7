"""Which backend evaluates each scheme on this device, and why a test of it is skipped: each backend's own answer
(``supports``, asked once per session and device), the per-scheme fallback of ``--quant-backend auto``, a build this
machine cannot run (AWQ without an accelerator), and notes results must carry (vLLM's weight-only FP4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pytest_quant.build.schemes import COMMON, get_scheme
from pytest_quant.evaluate.backends import Backend
from pytest_quant.evaluate.backends import names as backend_names
from pytest_quant.infra.errors import QuantError
from pytest_quant.infra.hardware import why_skip

if TYPE_CHECKING:
    from pytest_quant.session.session import Case


class SchemeSupport:
    """Mixed into QuantSession: what it asks of the session (settings, store, device, the session's backend)."""

    _supported: dict[str, Backend]
    _choices: dict[str | None, tuple[str, str | None]]

    def supported(self, name: str) -> Backend:
        """Backend ``name`` knowing which of the schemes it can run on this device (asked once per session)."""
        if name not in self._supported:
            self._supported[name] = self.backend_object(name).for_device(self.store, self.device, self._asked())
        return self._supported[name]

    def _asked(self) -> dict[str, dict[str, Any]]:
        """What the backends are asked about: each scheme users commonly ship and this session's, as one
        compressed-tensors config group at the session's group size, and each given checkpoint's own."""
        from pytest_quant.build.checks import config_group, quantization_config

        gs, out = self.settings.get("group_size"), {}
        names = list(dict.fromkeys([*COMMON, *(s for s in self.settings.get("scheme") if s)]))
        sizes = self._auto_groups(names) if gs == "auto" else dict.fromkeys(names, gs)
        for name in names:
            scheme, size = get_scheme(name), sizes[name]
            if isinstance(size, int) and scheme.group_size and not scheme.group_fixed:
                scheme = scheme.with_group(None if size == -1 else size)
            group = scheme.config_group()
            if self.settings.get("actorder") == "group":
                group["weights"]["actorder"] = "group"
            out[name] = {"group": group, "format": scheme.format}
        for case in self.cases():
            if case.checkpoint:
                path = Path(case.checkpoint)
                out[case.scheme] = {"group": config_group(path), "format": quantization_config(path).get("format")}
        return out

    def _auto_groups(self, names: list[str]) -> dict[str, int | None]:
        """The group (or block) size ``--quant-group-size auto`` gives each scheme on this session's models, where
        they agree; None (ask about the preset's) where they differ or a model has none (its build says why). vLLM
        answers per group: W4AFP8 runs at 128 only, which SmolLM2's 576 columns cannot take (seen on an H100)."""
        from pytest_quant.build.recipes import check_shapes

        models = [] if self.settings.get("checkpoint") else self.settings.get("model")
        shapes = [self.shape(m) for m in models]
        out: dict[str, int | None] = {}
        for name in names:
            try:
                found = {check_shapes(shape, self.recipe(name)).group_size for shape in shapes}
            except QuantError:
                found = set()
            out[name] = found.pop() if len(found) == 1 else None
        return out

    def _eval_choice(self, scheme: str | None) -> tuple[str, str | None]:
        """(the backend that evaluates ``scheme``, why it is not the session's or None), decided once per scheme."""
        if scheme not in self._choices:
            self._choices[scheme] = (self.backend, None)
            why = self.supported(self.backend).supports(scheme, self.device) if scheme else None
            if self.requested_backend == "auto" and why:
                for name in backend_names():
                    if name != self.backend and self.backend_object(name).available(asked=False) is None \
                            and not self.supported(name).supports(scheme, self.device):
                        self._choices[scheme] = (name, f"evaluated with {self.backend_object(name).title}: {why[:300]}")
                        break
        return self._choices[scheme]

    def eval_backend(self, scheme: str | None) -> str:
        """The backend that evaluates ``scheme``'s checkpoints and, paired with them, their base model: the
        session's; with --quant-backend auto, the first backend (in the registry's order) that can run a scheme
        the session's cannot here (vLLM's CPU build has no W4A16 kernel on CPUs without AVX-512 or native bf16:
        transformers). With a backend named, such a scheme is skipped instead (:meth:`why_skip`)."""
        return self._eval_choice(scheme)[0]

    def why_other(self, scheme: str | None) -> str | None:
        """Why ``scheme`` is evaluated with another backend than the session's, or None."""
        return self._eval_choice(scheme)[1]

    def why_not_build(self, case: Case) -> str | None:
        """Why ``case``'s checkpoint cannot be built on this machine (skipped before any build), or None."""
        if case.checkpoint:
            return None
        recipe = self.recipe(case.scheme)
        if recipe.method.startswith("awq") and self.compute == "cpu":
            return (f"{recipe.label}: llm-compressor 0.14's AWQ needs an accelerator (its activation cache pins memory: "
                    "'Cannot access accelerator device when none is available'); build on a GPU, or use "
                    "--quant-algorithm gptq or rtn")
        return None

    def scheme_note(self, scheme: str | None) -> str | None:
        """What results of ``scheme`` must say about how its backend ran it here (backend.note), or None."""
        return self.supported(self.eval_backend(scheme)).note(scheme) if scheme else None

    def why_skip(self, scheme: str | None, requires: Sequence[Any] = (), gpus: int = 1,
                 backend_needed: str | None = None) -> str | None:
        """Why a test of ``scheme`` (None: a test of no scheme) cannot run here, or None: the one skip policy of
        markers, the shipped suite and YAML items (hardware.why_skip, asked of the backend that would evaluate it)."""
        return why_skip(self.device, self.supported(self.eval_backend(scheme)),
                        self.why_other(scheme) or self.backend_reason, scheme, requires, gpus, backend_needed)

