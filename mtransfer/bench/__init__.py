"""The guided-step benchmark behind ``mtransfer bench`` (``guided_step``), its clocks and meters
(``measure``) and its chart (``plot``). Part of the package so that an installed mtransfer can run it;
``benchmarks/`` in a checkout holds the script entry points and the flow benchmark."""
