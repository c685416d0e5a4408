"""The provider side and the market's Dask: GPU detection (``gpu``), job runners and kinds
(``runners``, ``kinds``), the guarded scheduler and its plugin (``scheduler``), the worker plugin
(``worker_plugin``), job dispatch (``dispatch``) and the provider launcher (``launcher``)."""
