"""The merge queue (:mod:`.queue`), the only writer of the base branch, and where its check runs (:mod:`.checks`)."""
