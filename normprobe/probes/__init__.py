"""Built-in probes."""

DEFAULT_MASSIVE_RATIO = 100.0  # max/median of |h_i| above which the massive probe calls a token massive
