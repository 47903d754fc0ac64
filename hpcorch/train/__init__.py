"""The trainer that hpcorch jobs run. Importing this package does not import torch."""
