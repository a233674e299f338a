"""Scale-out on Ray Serve: a replica per device, a router that predicts. Needs the
optional `ray` extra (pip install "predlat[ray]"); nothing else in predlat imports it."""
