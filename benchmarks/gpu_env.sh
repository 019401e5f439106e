# Sourced by the GPU scripts: the device machine lacks scikit-learn 1.9; wheels carried in
# .whl/ (see the device notes) are installed to /tmp/site and put on the path.
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
