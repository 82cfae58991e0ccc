"""Tasks: how a rebuilt model is judged and what codecs retrain on. The MNIST classification
task of any classifier (`mnist`), MiniLM's sentence task (`sentence`), distillation from the
original model for any model (`distill`), synthetic inputs for the data-free codec (`probe`).
A task runs a network (`zoo`); the networks know no task."""
