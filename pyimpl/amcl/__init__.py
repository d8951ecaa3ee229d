"""AMCL references: the executable specification of nav2_amcl's particle filter.

Modules: ``poses`` (angle and pose arithmetic), ``maps`` (occupancy grid, nav2's cell
convention, distance map, ray casting), ``motion`` (differential and omni odometry models),
``sensors`` (likelihood field, likelihood field with log-sum and beam skipping, beam model),
``kld`` (KLD-adaptive resampling over (x, y, θ) bins, clusters and their statistics) and
``filter`` (the whole localizer with nav2's parameters and update gating).

Semantics follow ROS 2 nav2_amcl (src/pf, src/motion_model, src/sensors/laser, src/map);
every departure is named in the docstring where it happens and in docs/amcl.md.
"""
