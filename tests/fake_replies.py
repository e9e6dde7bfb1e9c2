"""A stand-in for the Flower reply Messages that a strategy's aggregate hooks read."""


class FakeReply:
    """The parts of a reply Message that ``aggregate_train`` reads: the sender, the
    message it answers (none here), the content or an error."""

    def __init__(self, node_id, content=None, error=None):
        self.metadata = type(
            "Meta", (), {"src_node_id": node_id, "reply_to_message_id": ""}
        )()
        self.content = content
        self.error = error

    def has_error(self):
        return self.error is not None
