"""rosbag2 support shared by the demo recorder and the replay tool (pure Python: rosbags, no rclpy)."""
