"""The provider side: GPU detection, and (soon) the worker plugin, launcher and job runners."""
