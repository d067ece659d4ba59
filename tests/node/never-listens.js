console.log('working without a server');
setInterval(() => {}, 1000);
