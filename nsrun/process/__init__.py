"""Programs in namespaces: the supervisor, the service's client, entering a namespace, spawning as a caller."""
