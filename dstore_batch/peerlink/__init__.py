"""The peer link: both ends of the websocket between followers and the leader."""
