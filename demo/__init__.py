"""``make demo`` / ``python -m demo``: a guided tour of cloudcred on this machine alone.

A local Kubernetes control plane (etcd + kube-apiserver, the test harness's), moto's
server as a stand-in AWS, the operator as a subprocess, and a few sample credentials
and clusters; everything runs in a temporary folder and is removed at the end.
"""
