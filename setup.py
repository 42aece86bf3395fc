from setuptools import find_packages, setup

setup(
    name="flask-atmosphere",
    version="0.1.0",
    description="Carefree server push for Flask: WebSocket and Atmosphere transports on gevent",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["flask_atmosphere", "flask_atmosphere.*"]),
    package_data={"flask_atmosphere": ["static/*.js"]},
    python_requires=">=3.10",
    install_requires=[
        "Flask>=2.3",
        "gevent>=23.9",
        "gevent-websocket>=0.10.1",
        "simplejson>=3.19",
        "wsproto>=1.2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "websocket-client>=1.8",
            "requests>=2.31",
            "playwright>=1.45",
            "pytest-rerunfailures>=14",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
