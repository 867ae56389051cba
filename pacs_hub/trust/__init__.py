"""Trust: who is calling (authentication), may they (one access policy), consent,
shares with community doctors, and the tamper-evident audit trail."""
