"""Starting chronoq: the ``chronoq`` command, the local run (``chronoq up``) and its embedded
broker. The only part of ``common`` that names the services, by module, to start them."""
