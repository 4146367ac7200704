"""The networks: the generator, the critic, their layers, the shape plan and the EMA."""
