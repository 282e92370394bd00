"""The projector into the ball with its similarity head, and its checkpoints."""
