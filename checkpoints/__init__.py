"""Package data: the embedded demo checkpoint (demo.safetensors), found by importlib.resources wherever the
package is installed."""
