"""The one error ``edgeloop kube`` raises for anything a user must act on; its message says what and why."""


class KubeError(RuntimeError):
    """The control plane could not be built, started, stopped or reached; the message gives the reason."""
