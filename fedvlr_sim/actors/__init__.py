"""Ray actors that place the engine on a cluster: ParameterServer, ClientShard, the Ray pool, metrics."""
