"""A kinematic stand-in for a robot cell behind ros2_control (no rclpy here; see ros/sim_robot.py)."""
