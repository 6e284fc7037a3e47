"""Remote inference: the policy behind an HTTP server on Ray Serve, and the client the policy node uses.

ROS-free. Nothing here imports Ray except ``app`` (the server's deployments), so the node's client
(``client``) and the request checks (``protocol``) need no Ray installed.
"""
