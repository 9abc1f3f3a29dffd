"""fedkey: federated next-word prediction for mobile keyboards.

The components live in top-level folders and install as subpackages: ``fedkey.models`` (network,
tokenizer, metrics, ONNX export), ``fedkey.privacy`` (DP mechanisms, accountants, audits),
``fedkey.protocol`` (update encoding and wire format), ``fedkey.device_sim`` (simulated phones) and
``fedkey.server`` (Flower strategy, ServerApp, gateway). This package holds the CLI and configuration.
"""

__version__ = "0.1.0"
